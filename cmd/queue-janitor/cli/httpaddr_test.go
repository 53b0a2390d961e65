package cli

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
)

// TestServeHTTPAddrDefault: with --embedded-nats, whose server listens on
// the loopback interface only, serve's health and metrics listener does too
// by default; an --http-addr or QUEUE_JANITOR_HTTP_ADDR that is set wins,
// even when it is the general default or empty (off). Without the embedded
// server the default stays every interface.
func TestServeHTTPAddrDefault(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		args []string
		env  map[string]string
		want string
	}{
		"external NATS":                   {args: nil, want: ":8080"},
		"embedded":                        {args: []string{"--embedded-nats"}, want: EmbeddedHTTPAddr},
		"embedded by its variable":        {env: map[string]string{"QUEUE_JANITOR_EMBEDDED_NATS": "true"}, want: EmbeddedHTTPAddr},
		"embedded, flag set":              {args: []string{"--embedded-nats", "--http-addr", ":9090"}, want: ":9090"},
		"embedded, flag set to :8080":     {args: []string{"--embedded-nats", "--http-addr=:8080"}, want: ":8080"},
		"embedded, listener off":          {args: []string{"--embedded-nats", "--http-addr", ""}, want: ""},
		"embedded, variable set":          {args: []string{"--embedded-nats"}, env: map[string]string{"QUEUE_JANITOR_HTTP_ADDR": "0.0.0.0:8080"}, want: "0.0.0.0:8080"},
		"external NATS, variable set":     {env: map[string]string{"QUEUE_JANITOR_HTTP_ADDR": "127.0.0.1:9999"}, want: "127.0.0.1:9999"},
		"embedded, flag wins on variable": {args: []string{"--embedded-nats", "--http-addr", ":7070"}, env: map[string]string{"QUEUE_JANITOR_HTTP_ADDR": ":6060"}, want: ":7070"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := DefaultConfig()
			f := serveFlags(&cfg)
			if err := f.parse(tc.args, func(k string) string { return tc.env[k] }); err != nil {
				t.Fatal(err)
			}
			applyEmbeddedDefaults(&cfg, f)
			if cfg.HTTPAddr != tc.want {
				t.Errorf("--http-addr %q, want %q", cfg.HTTPAddr, tc.want)
			}
		})
	}
}

// TestServeHelpSaysTheEmbeddedDefault: serve --help says that the default
// differs with --embedded-nats; healthcheck, which probes the loopback
// interface either way, keeps its plain help.
func TestServeHelpSaysTheEmbeddedDefault(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := Run(t.Context(), []string{"serve", "--help"}, noEnv, &out, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "with --embedded-nats the default is "+EmbeddedHTTPAddr) {
		t.Errorf("serve --help does not give the embedded default:\n%s", out.String())
	}
	out.Reset()
	if err := Run(t.Context(), []string{"healthcheck", "--help"}, noEnv, &out, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "embedded") {
		t.Errorf("healthcheck --help mentions the embedded server:\n%s", out.String())
	}
}
