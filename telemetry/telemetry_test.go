package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/trace"
)

func TestTraceContextRoundTrip(t *testing.T) {
	t.Parallel()
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	ctx := trace.ContextWithSpanContext(t.Context(), sc)
	tp, ts := TraceContext(ctx)
	if tp != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" || ts != "" {
		t.Fatalf("TraceContext = %q, %q", tp, ts)
	}
	back := trace.SpanContextFromContext(WithRemoteParent(context.Background(), tp, "vendor=1"))
	if !back.IsRemote() || back.TraceID() != tid || back.SpanID() != sid || back.TraceState().Get("vendor") != "1" {
		t.Errorf("WithRemoteParent = %+v", back)
	}
	if got := trace.SpanContextFromContext(WithRemoteParent(context.Background(), "garbage", "")); got.IsValid() {
		t.Errorf("a malformed traceparent must be ignored, got %+v", got)
	}
	if tp, _ := TraceContext(context.Background()); tp != "" {
		t.Errorf("no span: traceparent %q, want none", tp)
	}
}

func TestLoggerStampsTraceIDs(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log, err := NewLogger(&buf, "info", LogFormatJSON)
	if err != nil {
		t.Fatal(err)
	}
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(t.Context(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
	log.Info().Ctx(ctx).Str("job_id", "7").Msg("event handled")
	log.Debug().Msg("not at info level")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("one JSON line expected: %v: %s", err, buf.String())
	}
	if line["trace_id"] != tid.String() || line["span_id"] != sid.String() || line["job_id"] != "7" {
		t.Errorf("log line = %v", line)
	}
	for _, bad := range [][2]string{{"loud", "json"}, {"info", "xml"}, {"", "json"}} {
		if _, err := NewLogger(io.Discard, bad[0], bad[1]); err == nil {
			t.Errorf("NewLogger(%q, %q) accepted", bad[0], bad[1])
		}
	}
}

func TestSetupSelectsExportersFromEnvironment(t *testing.T) {
	t.Parallel()
	cases := []struct {
		env  map[string]string
		want []string
	}{
		{nil, []string{"traces:none", "metrics:prometheus"}},
		{map[string]string{"OTEL_TRACES_EXPORTER": "console"}, []string{"traces:console", "metrics:prometheus"}},
		{map[string]string{"OTEL_SDK_DISABLED": "true"}, []string{"traces:disabled", "metrics:prometheus"}},
		{map[string]string{"OTEL_TRACES_EXPORTER": "none"}, []string{"traces:none", "metrics:prometheus"}},
	}
	for _, tc := range cases {
		tel, err := Setup(t.Context(), Config{ServiceName: "t", Console: io.Discard,
			Getenv: func(k string) string { return tc.env[k] }})
		if err != nil {
			t.Fatalf("%v: %v", tc.env, err)
		}
		if strings.Join(tel.Exporters, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%v: exporters %v, want %v", tc.env, tel.Exporters, tc.want)
		}
		if err := tel.Shutdown(t.Context()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}
	_, err := Setup(t.Context(), Config{Getenv: func(k string) string {
		return map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}[k]
	}})
	if err == nil {
		t.Error("an unknown exporter was accepted")
	}
}

func TestConsoleExporterPrintsSpans(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	tel, err := Setup(t.Context(), Config{ServiceName: "t", Console: &out, ForceConsole: true})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.Tracer().Start(t.Context(), "process job.status.revoked")
	span.End()
	if err := tel.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"Name":"process job.status.revoked"`) {
		t.Errorf("console output lacks the span:\n%s", out.String())
	}
}

func TestMetricsRecordAndInventory(t *testing.T) {
	t.Parallel()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	m, err := NewMetrics(mp)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	m.EventHandled(ctx, "revoked", "cleanup", "removed", 3*time.Millisecond, time.Second)
	m.EventHandled(ctx, "revoked", "cleanup", "removed", 5*time.Millisecond, 0)
	m.Discarded(ctx, "cleanup", 44286)
	m.Discarded(ctx, "flush", 0)
	m.DeadLettered(ctx, "malformed")
	m.SetInventory(Inventory{Streams: map[string]int64{"terminal": 2, "live": 5}, Messages: map[string]int64{"terminal": 70},
		Pending: map[string]int64{"terminal": 40}, At: time.Now()})
	// By instrument; the gauges by job_state (only they carry it).
	got := collect(t, reader, func(name string, attrs attribute.Set) string {
		if state, ok := attrs.Value("job_state"); ok {
			return name + "/" + state.AsString()
		}
		return name
	})
	want := map[string]int64{
		"queue_janitor.events": 2, "queue_janitor.action.duration": 2, "queue_janitor.event.lag": 1,
		"queue_janitor.messages.discarded": 44286, "queue_janitor.deadletters": 1,
		"queue_janitor.job_streams/terminal": 2, "queue_janitor.job_streams/live": 5, "queue_janitor.job_streams/unknown": 0,
		"queue_janitor.job_messages/terminal": 70, "queue_janitor.job_messages.pending/terminal": 40,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
}

// collect reads every data point of reader and sums them under key(the
// instrument's name, the point's attributes): a counter's or a gauge's
// value, a histogram's count.
func collect(t *testing.T, reader *sdkmetric.ManualReader, key func(name string, attrs attribute.Set) string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			switch d := mt.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					got[key(mt.Name, p.Attributes)] += p.Value
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					got[key(mt.Name, p.Attributes)] += p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					got[key(mt.Name, p.Attributes)] += int64(p.Count)
				}
			}
		}
	}
	return got
}

func TestHealthHandler(t *testing.T) {
	t.Parallel()
	var down error
	h := WithPprof(HealthHandler(map[string]Check{
		"nats": func(context.Context) error { return down },
		"kv":   func(context.Context) error { return nil },
	}, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("metrics")) })))
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get("/readyz"); code != 200 || !strings.Contains(body, `"ready"`) {
		t.Errorf("/readyz = %d %s", code, body)
	}
	down = errors.New("NATS connection is RECONNECTING")
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "RECONNECTING") || strings.Contains(body, `"kv"`) {
		t.Errorf("/readyz while down = %d %s", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := get("/metrics"); code != 200 || body != "metrics" {
		t.Errorf("/metrics = %d %s", code, body)
	}
	if code, _ := get("/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/ = %d", code)
	}
}
