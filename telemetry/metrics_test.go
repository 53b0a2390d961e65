package telemetry

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// scrape returns what /metrics serves.
func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body.String())
	}
	return rec.Body.String()
}

// TestPrimeCreatesZeroSeries: after Prime, every named counter series is on
// /metrics at zero; a later event counts from there.
func TestPrimeCreatesZeroSeries(t *testing.T) {
	t.Parallel()
	tel, err := Setup(t.Context(), Config{ServiceName: "t", Console: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(t.Context()) })
	m, err := NewMetrics(tel.MeterProvider)
	if err != nil {
		t.Fatal(err)
	}
	if text := scrape(t, tel.MetricsHandler); strings.Contains(text, "queue_janitor_events_total{") {
		t.Fatalf("series before Prime:\n%s", text)
	}
	m.Prime(t.Context(), Series{
		Events:            []EventSeries{{"revoked", "cleanup", "removed"}, {"restart_requested", "flush", "nothing_to_remove"}},
		Operations:        []string{"jetstream.delete_stream"},
		DeadLetterReasons: []string{"malformed"},
		DiscardActions:    []string{"cleanup", "flush"},
		Verdicts:          []string{"clean"},
	})
	m.EventHandled(t.Context(), "revoked", "cleanup", "removed", time.Millisecond, 0)
	text := scrape(t, tel.MetricsHandler)
	for _, line := range []string{
		`queue_janitor_events_total{decision="cleanup",result="removed",status="revoked"} 1`,
		`queue_janitor_events_total{decision="flush",result="nothing_to_remove",status="restart_requested"} 0`,
		`queue_janitor_retries_total{operation="jetstream.delete_stream"} 0`,
		`queue_janitor_deadletters_total{reason="malformed"} 0`,
		`queue_janitor_messages_discarded_total{action="cleanup"} 0`,
		`queue_janitor_messages_discarded_total{action="flush"} 0`,
		`queue_janitor_reconciler_actions_total{verdict="clean"} 0`,
		`queue_janitor_reconciler_orphans_total 0`,
	} {
		if !strings.Contains(text, "\n"+line+"\n") {
			t.Errorf("/metrics lacks %s", line)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", text)
	}
}

// TestMetricsSeriesKeptApart: each measurement lands in its own series
// although the attribute sets are built once and reused.
func TestMetricsSeriesKeptApart(t *testing.T) {
	t.Parallel()
	reader := sdkmetric.NewManualReader()
	m, err := NewMetrics(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, e := range [][3]string{
		{"revoked", "cleanup", "removed"}, {"failure", "cleanup", "removed"},
		{"revoked", "cleanup", "already_done"}, {"revoked", "cleanup", "already_done"}, {"revoked", "cleanup", "removed"},
		{"revoked", "cleanup", "removed"},
	} {
		m.EventHandled(ctx, e[0], e[1], e[2], time.Millisecond, time.Second)
	}
	m.Discarded(ctx, "cleanup", 5)
	m.Discarded(ctx, "flush", 7)
	m.Discarded(ctx, "cleanup", 1)
	got := collect(t, reader, func(name string, attrs attribute.Set) string {
		return name + " " + attrs.Encoded(attribute.DefaultEncoder())
	})
	want := map[string]int64{
		"queue_janitor.events decision=cleanup,result=removed,status=revoked":      3,
		"queue_janitor.events decision=cleanup,result=removed,status=failure":      1,
		"queue_janitor.events decision=cleanup,result=already_done,status=revoked": 2,
		"queue_janitor.action.duration decision=cleanup,result=removed":            4,
		"queue_janitor.action.duration decision=cleanup,result=already_done":       2,
		"queue_janitor.event.lag status=revoked":                                   5,
		"queue_janitor.event.lag status=failure":                                   1,
		"queue_janitor.messages.discarded action=cleanup":                          6,
		"queue_janitor.messages.discarded action=flush":                            7,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d series, want %d: %v", len(got), len(want), got)
	}
}
