package cli

import (
	"strings"

	"github.com/example/queue-janitor/telemetry"
)

// No secret leaves the process: every command's output, log lines, error
// and spans go through one telemetry.Redactor, built before any flag is
// parsed from the command line and the environment, so that even an error
// about the flags themselves is masked. NKey seed and .creds files are
// never read into a message; the redactor masks seeds and JWTs by their
// shape should a library's error ever quote them.

// secretFlags are the flags and variables whose values are secrets.
var secretFlags = map[string]string{"nats-password": "NATS_PASSWORD", "nats-token": "NATS_TOKEN"}

// urlFlags hold URLs, whose user information is secret.
var urlFlags = map[string]string{"nats-url": "NATS_URL"}

// redactorFor returns the redactor of one run of the command line args in
// the environment getenv.
func redactorFor(args []string, getenv func(string) string) *telemetry.Redactor {
	var secrets []string
	add := func(name, value string) {
		if _, ok := secretFlags[name]; ok {
			secrets = append(secrets, value)
		}
		if _, ok := urlFlags[name]; ok {
			secrets = append(secrets, telemetry.URLSecrets(value)...)
		}
	}
	for _, table := range []map[string]string{secretFlags, urlFlags} {
		for name, env := range table {
			add(name, getenv(env))
		}
	}
	// The flag package accepts -name value, --name value, -name=value and
	// --name=value anywhere before a lone "--".
	for i, a := range args {
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			continue
		}
		name, value, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case inline:
			add(name, value)
		case i+1 < len(args):
			add(name, args[i+1])
		}
	}
	return telemetry.NewRedactor(secrets...)
}

// natsSecrets are the secrets of a parsed connection configuration.
func natsSecrets(c NATSConfig) []string {
	return append([]string{c.Password, c.Token}, telemetry.URLSecrets(c.URL)...)
}
