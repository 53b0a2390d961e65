package cli

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func noEnv(string) string { return "" }

func TestDemoReplaysTheIncident(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := Run(t.Context(), []string{"demo", "--log-format", "json"}, noEnv, &out, zerolog.NewTestWriter(t))
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		`messages in the job's stream\s+44,286\s+43,597\s+87,883`,
		`tasks delivered to the worker\s+3,000\s+43,597\s+84,883`,
		`of which delivered twice\s+0\s+0\s+40,597`,
	} {
		if !regexp.MustCompile(want).MatchString(text) {
			t.Errorf("demo output lacks %q:\n%s", want, text)
		}
	}
}

func TestHelpListsEveryFlagWithItsVariable(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"serve", "demo", "version"} {
		t.Run(cmd, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			err := Run(t.Context(), []string{cmd, "--help"}, noEnv, &out, &out)
			if !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("err = %v, want flag.ErrHelp", err)
			}
			cfg := DefaultConfig()
			f := flagSetFor(cmd, &cfg)
			f.fs.VisitAll(func(fl *flag.Flag) {
				line := regexp.MustCompile(`(?m)^  --` + regexp.QuoteMeta(fl.Name) + `\b.*\[` + regexp.QuoteMeta(f.envOf[fl.Name]) + `\] \(default `)
				if !line.MatchString(out.String()) {
					t.Errorf("help has no line for --%s with [%s] and its default", fl.Name, f.envOf[fl.Name])
				}
				if f.envOf[fl.Name] == "" {
					t.Errorf("--%s has no environment variable", fl.Name)
				}
			})
		})
	}
}

// flagSetFor builds the flag set a command registers, for inspection.
func flagSetFor(cmd string, cfg *Config) *flagSet {
	switch cmd {
	case "serve":
		return serveFlags(cfg)
	case "demo":
		f := newFlagSet("demo", "", "")
		logFlags(f, cfg)
		var b bool
		f.Bool(&b, "traces", envPrefix+"DEMO_TRACES", "")
		return f
	}
	return newFlagSet(cmd, "", "")
}

func TestEnvironmentAndFlagsPrecedence(t *testing.T) {
	t.Parallel()
	env := map[string]string{"NATS_URL": "nats://from-env:4222", envPrefix + "CONCURRENCY": "7", envPrefix + "LOG_LEVEL": "warn"}
	cfg := DefaultConfig()
	f := serveFlags(&cfg)
	if err := f.parse([]string{"--log-level", "debug"}, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if cfg.NATS.URL != "nats://from-env:4222" || cfg.Intake.Concurrency != 7 || cfg.LogLevel != "debug" {
		t.Errorf("got url %q concurrency %d level %q", cfg.NATS.URL, cfg.Intake.Concurrency, cfg.LogLevel)
	}
	bad := serveFlags(&cfg)
	err := bad.parse(nil, func(k string) string {
		if k == envPrefix+"ACK_WAIT" {
			return "soon"
		}
		return ""
	})
	if err == nil || !strings.Contains(err.Error(), envPrefix+"ACK_WAIT") {
		t.Errorf("a bad variable must be named in the error, got %v", err)
	}
}

func TestValidateNamesTheBadSetting(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		mutate func(*Config)
		want   string
	}{
		"empty url":          {func(c *Config) { c.NATS.URL = "" }, "--nats-url"},
		"two auth methods":   {func(c *Config) { c.NATS.User, c.NATS.Token = "u", "t" }, "choose one"},
		"cert without key":   {func(c *Config) { c.NATS.TLSCertFile = "c.pem" }, "--nats-tls-key"},
		"bad stream pattern": {func(c *Config) { c.Names.Stream = "job.{id}" }, "stream pattern"},
		"no id in consumer":  {func(c *Config) { c.Names.Consumer = "consumer" }, "consumer pattern"},
		"event subject":      {func(c *Config) { c.Intake.Subject = "job.status.>" }, "event subject"},
		"deadletter loops":   {func(c *Config) { c.Events.DeadLetterSubject = "job.status.dead" }, "dead-letter subject"},
		"terminal restart":   {func(c *Config) { c.TerminalStatuses = "revoked,restart_requested" }, "terminal"},
		"short lease":        {func(c *Config) { c.Lease = 1e9 }, "lease"},
		"kv replicas":        {func(c *Config) { c.Records.Replicas = 4 + 3 }, "--kv-replicas"},
		"embedded listen":    {func(c *Config) { c.Embedded.Enabled, c.Embedded.Listen = true, "4222" }, "--embedded-listen"},
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := DefaultConfig()
			tc.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := Run(t.Context(), []string{"frobnicate"}, noEnv, &out, &out); !errors.Is(err, ErrUsage) {
		t.Errorf("unknown command: err = %v, want ErrUsage", err)
	}
	if err := Run(t.Context(), []string{"serve", "--no-such-flag"}, noEnv, &out, &out); !errors.Is(err, ErrUsage) {
		t.Errorf("unknown flag: err = %v, want ErrUsage", err)
	}
	if err := Run(t.Context(), nil, noEnv, &out, &out); !errors.Is(err, ErrUsage) {
		t.Errorf("no command: err = %v, want ErrUsage", err)
	}
	out.Reset()
	if err := Run(t.Context(), []string{"version"}, noEnv, &out, &out); err != nil || !strings.HasPrefix(out.String(), "queue-janitor ") {
		t.Errorf("version: %v %q", err, out.String())
	}
}

func TestUnreachableServerSaysWhatToDo(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := Run(t.Context(), []string{"serve", "--nats-url", "nats://127.0.0.1:1", "--http-addr", "", "--nats-connect-timeout", "1s"},
		noEnv, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "is the server running? set NATS_URL") {
		t.Errorf("err = %v", err)
	}
}

// TestReadmeDocumentsEveryFlag keeps the configuration reference
// (docs/OPERATIONS.md, which the README links to) in step with the code:
// every flag of every command, as its --help lists it, must have a row with
// its variable there.
func TestReadmeDocumentsEveryFlag(t *testing.T) {
	t.Parallel()
	const doc = "docs/OPERATIONS.md"
	readme, err := os.ReadFile(filepath.Join("..", "..", "..", filepath.FromSlash(doc)))
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^  --([a-z0-9-]+)\b.*\[([A-Z0-9_]+)\] \(default `)
	for name := range commands() {
		var help bytes.Buffer
		if err := Run(t.Context(), []string{name, "--help"}, noEnv, &help, &help); !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("%s --help: %v", name, err)
		}
		flags := line.FindAllStringSubmatch(help.String(), -1)
		if name != "version" && len(flags) == 0 {
			t.Errorf("%s --help lists no flags", name)
		}
		for _, m := range flags {
			row := "| `--" + m[1] + "` | `" + m[2] + "` |"
			if !bytes.Contains(readme, []byte(row)) {
				t.Errorf("%s has no row %q (command %s)", doc, row, name)
			}
		}
	}
}
