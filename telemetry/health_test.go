package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// readyz runs one /readyz request against checks and returns the status,
// the failed checks and how long it took.
func readyz(t *testing.T, checks map[string]Check) (int, map[string]string, time.Duration) {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/readyz", nil)
	rec := httptest.NewRecorder()
	start := time.Now()
	HealthHandler(checks, nil).ServeHTTP(rec, req)
	took := time.Since(start)
	var body struct {
		Failed map[string]string `json:"failed"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("/readyz body %q: %v", rec.Body.String(), err)
	}
	return rec.Code, body.Failed, took
}

// TestReadyzRunsChecksConcurrently: two checks that each need the other to
// have started both pass, which only happens when they run at once.
func TestReadyzRunsChecksConcurrently(t *testing.T) {
	t.Parallel()
	aStarted, bStarted := make(chan struct{}), make(chan struct{})
	waitFor := func(mine, other chan struct{}) Check {
		return func(ctx context.Context) error {
			close(mine)
			select {
			case <-other:
				return nil
			case <-ctx.Done():
				return errors.New("the other check never started")
			}
		}
	}
	code, failed, _ := readyz(t, map[string]Check{"a": waitFor(aStarted, bStarted), "b": waitFor(bStarted, aStarted)})
	if code != http.StatusOK {
		t.Errorf("/readyz = %d, failed %v; want 200 with both checks run at once", code, failed)
	}
}

// TestReadyzAnswersWhileACheckHangs: NATS is down (its check fails at
// once) and the bucket check would wait for a server that does not answer;
// /readyz still answers 503 within CheckTimeout, naming both.
func TestReadyzAnswersWhileACheckHangs(t *testing.T) {
	t.Parallel()
	code, failed, took := readyz(t, map[string]Check{
		"nats":     func(context.Context) error { return errors.New("NATS connection is RECONNECTING") },
		"consumer": func(context.Context) error { return nil },
		"kv": func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		},
	})
	if code != http.StatusServiceUnavailable || !strings.Contains(failed["nats"], "RECONNECTING") || failed["kv"] == "" {
		t.Errorf("/readyz = %d, failed %v; want 503 naming nats and kv", code, failed)
	}
	if _, ok := failed["consumer"]; ok {
		t.Errorf("the passing consumer check is reported failed: %v", failed)
	}
	// Far above CheckTimeout, for a noisy machine; before, the hanging
	// check held the answer for 2 s.
	if limit := CheckTimeout + time.Second; took > limit {
		t.Errorf("/readyz took %s with a hanging check, want under %s", took, limit)
	}
	t.Logf("/readyz with a hanging check answered in %s", took)
}
