package telemetry

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
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
