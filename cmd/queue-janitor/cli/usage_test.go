package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// TestUsageErrorsSayWhatIsWrong: a bad command line is refused before
// anything connects, with an error that names the flag and what it wants,
// and at most one line pointing to --help (never the whole help).
func TestUsageErrorsSayWhatIsWrong(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		args []string
		env  map[string]string
		want []string
		not  []string
	}{
		"unknown flag": {args: []string{"ls", "--no-such-flag"},
			want: []string{"ls: flag provided but not defined: -no-such-flag\nsee 'queue-janitor ls --help' for its flags"}},
		"misspelled flag": {args: []string{"ls", "--oldr-than", "5m"}, want: []string{`did you mean "--older-than"?`}},
		"duration without unit": {args: []string{"ls", "--older-than", "5"},
			want: []string{"-older-than", "the duration has no unit: write 5s, 5m or 5h"}},
		"duration without unit from the environment": {args: []string{"ls"}, env: map[string]string{"QUEUE_JANITOR_LS_OLDER_THAN": "5"},
			want: []string{"QUEUE_JANITOR_LS_OLDER_THAN", "no unit"}},
		"not a duration": {args: []string{"serve", "--ack-wait", "soon"}, want: []string{"-ack-wait", "not a duration", "30s"}},
		"not a number":   {args: []string{"serve", "--concurrency", "many"}, want: []string{"-concurrency", "not a whole number"}},
		"bad verdict":    {args: []string{"ls", "--verdict", "bogus"}, want: []string{`--verdict "bogus": want clean, grace, orphan, keep or busy`}},
		"bad state":      {args: []string{"ls", "--state", "bogus"}, want: []string{`--state "bogus": want terminal, live or unknown`}},
		"misspelled state": {args: []string{"ls", "--state", "termnal"},
			want: []string{`--state "termnal"`, `did you mean "terminal"?`}},
		"bad sort":          {args: []string{"ls", "--sort", "size"}, want: []string{`--sort "size": want job, age, messages or pending`}},
		"emit without job":  {args: []string{"emit", "--status", "revoked"}, want: []string{"--job is required"}},
		"emit bad job":      {args: []string{"emit", "--job", "01", "--status", "revoked"}, want: []string{"--job"}},
		"malformed URL ls":  {args: []string{"ls", "--nats-url", "nats//host"}, want: []string{`"nats//host" is not a valid NATS URL`}, not: []string{"TLS"}},
		"malformed URL env": {args: []string{"sweep"}, env: map[string]string{"NATS_URL": "nats//host:4222"}, want: []string{"is not a valid NATS URL"}},
		"malformed URL emit": {args: []string{"emit", "--job", "7", "--status", "revoked", "--nats-url", "nats//host"},
			want: []string{"is not a valid NATS URL"}, not: []string{"TLS"}},
		"malformed URL serve": {args: []string{"serve", "--nats-url", "nats//host", "--http-addr", ""},
			want: []string{"is not a valid NATS URL"}, not: []string{"TLS"}},
		"bad scheme":                         {args: []string{"ls", "--nats-url", "http://host:4222"}, want: []string{`scheme "http"`}},
		"bad port":                           {args: []string{"ls", "--nats-url", "nats://host:42x"}, want: []string{`"nats://host:42x" is not a valid URL`}},
		"second URL bad":                     {args: []string{"ls", "--nats-url", "nats://a:4222,nats//b"}, want: []string{`"nats//b"`}},
		"only commas":                        {args: []string{"ls", "--nats-url", " , "}, want: []string{"--nats-url has no URL"}},
		"ws path allowed, malformed one not": {args: []string{"ls", "--nats-url", "ws://a:8080/nats,nats://b:4222/x"}, want: []string{`"nats://b:4222/x" is not a valid NATS URL`}},
		"unknown command":                    {args: []string{"frobnicate"}, want: []string{`unknown command "frobnicate"` + "\nsee 'queue-janitor --help'"}},
		"misspelled command":                 {args: []string{"lss"}, want: []string{`did you mean "ls"?`}},
		"emit misspelled status": {args: []string{"emit", "--job", "7", "--status", "canceled"},
			want: []string{`--status "canceled" is not a known status; did you mean "cancelled"?`, "--allow-any-status",
				"revoked, failure, cancelled", "created, pending, started, success, retry, canceling, received, unknown"}},
		"emit status with a space": {args: []string{"emit", "--job", "7", "--status", "rev oked"},
			want: []string{`did you mean "revoked"?`}, not: []string{"event stream"}},
		"emit status with a space, any allowed": {args: []string{"emit", "--job", "7", "--status", "rev oked", "--allow-any-status"},
			want: []string{"cannot be a subject token"}, not: []string{"event stream"}},
		"emit status with a wildcard": {args: []string{"emit", "--job", "7", "--status", "*", "--allow-any-status"},
			want: []string{"cannot be a subject token"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := Run(t.Context(), tc.args, func(k string) string { return tc.env[k] }, &stdout, &stderr)
			if !errors.Is(err, ErrUsage) {
				t.Fatalf("err = %v, want a usage error", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(err.Error(), n) {
					t.Errorf("error %q says %q", err, n)
				}
			}
			if lines := strings.Count(err.Error(), "\n"); lines > 1 {
				t.Errorf("error has %d lines, want the error and at most one hint:\n%s", lines+1, err)
			}
			if stdout.Len()+stderr.Len() > 0 {
				t.Errorf("printed more than the error:\nstdout: %s\nstderr: %s", stdout.String(), stderr.String())
			}
		})
	}
}

// TestEmbeddedHintOnlyWhereTheFlagIs: "try --embedded-nats" is suggested
// by serve, which has the flag, and by no operator command.
func TestEmbeddedHintOnlyWhereTheFlagIs(t *testing.T) {
	t.Parallel()
	dead := "nats://" + deadAddr(t)
	for _, args := range [][]string{
		{"serve", "--http-addr", ""}, {"ls"}, {"sweep"}, {"clean", "7"}, {"flush", "7"}, {"emit", "--job", "7", "--status", "revoked"},
	} {
		t.Run(args[0], func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			err := Run(t.Context(), append(args, "--nats-url", dead, "--nats-connect-timeout", "1s"), noEnv, &out, &out)
			if err == nil || !strings.Contains(err.Error(), "is the server running?") {
				t.Fatalf("err = %v, want that the server cannot be reached", err)
			}
			if got, want := strings.Contains(err.Error(), "--embedded-nats"), args[0] == "serve"; got != want {
				t.Errorf("suggests --embedded-nats: %v, want %v: %v", got, want, err)
			}
		})
	}
	var out bytes.Buffer
	err := Run(t.Context(), []string{"ls", "--nats-url", ""}, noEnv, &out, &out)
	if err == nil || strings.Contains(err.Error(), "embedded") {
		t.Errorf("ls with an empty URL: err = %v, want no --embedded-nats hint", err)
	}
}
