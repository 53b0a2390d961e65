package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel"
)

// lockedBuffer is a bytes.Buffer safe for concurrent writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// jsonLines decodes every line of s, failing on one that is not JSON.
func jsonLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not a JSON line: %q", line)
			continue
		}
		out = append(out, m)
	}
	return out
}

// closedPort is a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// TestExportErrorIsAJSONWarning: with the OTLP endpoint on a closed port,
// the failed export of a span comes out as one structured warning through
// the Setup's logger ("telemetry export failed", the error, the signal),
// and nothing reaches the plain-text logger OpenTelemetry's default error
// handler writes to. Not parallel: the OTLP exporter reads the process
// environment.
func TestExportErrorIsAJSONWarning(t *testing.T) {
	getenv := setOTELEnv(t, map[string]string{
		"OTEL_TRACES_EXPORTER":        "otlp",
		"OTEL_METRICS_EXPORTER":       "none",
		"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + closedPort(t),
		"OTEL_EXPORTER_OTLP_INSECURE": "true",
		"OTEL_EXPORTER_OTLP_TIMEOUT":  "300", // milliseconds
	})
	var plain lockedBuffer // the standard logger: where the default handler prints
	log.SetOutput(&plain)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	var logs lockedBuffer
	tel, err := Setup(t.Context(), Config{ServiceName: "t", Getenv: getenv, Logger: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.Tracer().Start(t.Context(), "process job.status.revoked")
	span.End()
	_ = tel.Shutdown(t.Context()) // the final export fails and is handled

	lines := jsonLines(t, logs.String())
	if len(lines) != 1 {
		t.Fatalf("want one log line, got %d:\n%s", len(lines), logs.String())
	}
	line := lines[0]
	if line["level"] != "warn" || line["message"] != "telemetry export failed" || line["signal"] != "traces" {
		t.Errorf("log line %v: want level warn, message \"telemetry export failed\", signal traces", line)
	}
	if msg, _ := line["error"].(string); !strings.Contains(msg, "export") {
		t.Errorf("error field %q does not say the export failed", msg)
	}
	if plain.String() != "" {
		t.Errorf("plain text went to standard error:\n%s", plain.String())
	}
}

// TestOTelErrorsReachTheirOwnSetup: two Setups in one process (as in the
// tests that run serve in parallel) each get their own exporters' errors;
// an untagged error goes to the most recent one still running.
func TestOTelErrorsReachTheirOwnSetup(t *testing.T) {
	var a, b lockedBuffer
	la, lb := newErrorLog(zerolog.New(&a), time.Minute, time.Now), newErrorLog(zerolog.New(&b), time.Minute, time.Now)
	otelErrors.add(la)
	otelErrors.add(lb)
	otel.Handle(&exportError{signal: "traces", log: la, err: errors.New("export a")})
	otel.Handle(&exportError{signal: "metrics", log: lb, err: errors.New("export b")})
	otelErrors.remove(lb)
	otel.Handle(errors.New("untagged"))
	otelErrors.remove(la)

	want := map[*lockedBuffer][]string{&a: {"export a", "untagged"}, &b: {"export b"}}
	for buf, errs := range want {
		lines := jsonLines(t, buf.String())
		if len(lines) != len(errs) {
			t.Errorf("want %d lines, got:\n%s", len(errs), buf.String())
			continue
		}
		for i, line := range lines {
			if line["error"] != errs[i] {
				t.Errorf("line %d: %v, want error %q", i, line, errs[i])
			}
		}
	}
}

// TestOTelErrorsAreRateLimited: an unreachable collector fails every
// export; one line per interval goes out, the next says how many were left
// out, and Shutdown logs what was held back.
func TestOTelErrorsAreRateLimited(t *testing.T) {
	t.Parallel()
	var buf lockedBuffer
	now := time.Unix(1_700_000_000, 0)
	l := newErrorLog(zerolog.New(&buf), time.Minute, func() time.Time { return now })
	for i := range 5 {
		l.log("traces", errors.New("refused "+string(rune('a'+i))))
	}
	now = now.Add(time.Minute)
	l.log("traces", errors.New("refused f"))
	l.log("metrics", errors.New("refused g"))
	l.log("metrics", errors.New("refused h"))
	l.flush()
	l.flush() // nothing more held

	lines := jsonLines(t, buf.String())
	want := []struct {
		err        string
		suppressed float64
	}{{"refused a", 0}, {"refused f", 4}, {"refused h", 1}}
	if len(lines) != len(want) {
		t.Fatalf("want %d lines, got:\n%s", len(want), buf.String())
	}
	for i, w := range want {
		got, _ := lines[i]["suppressed"].(float64)
		if lines[i]["error"] != w.err || got != w.suppressed || lines[i]["message"] != "telemetry export failed" {
			t.Errorf("line %d: %v, want error %q, suppressed %v", i, lines[i], w.err, w.suppressed)
		}
	}
}
