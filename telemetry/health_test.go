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

// readyz runs one /readyz request against checks and returns the status
// and the failed checks. A request that does not answer within a minute
// fails the test: the minute only guards against a hang.
func readyz(t *testing.T, checks map[string]Check) (int, map[string]string) {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/readyz", nil)
	rec := httptest.NewRecorder()
	served := make(chan struct{})
	go func() {
		defer close(served)
		HealthHandler(checks, nil).ServeHTTP(rec, req)
	}()
	select {
	case <-served:
	case <-time.After(time.Minute):
		t.Fatal("/readyz did not answer within a minute")
	}
	var body struct {
		Failed map[string]string `json:"failed"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("/readyz body %q: %v", rec.Body.String(), err)
	}
	return rec.Code, body.Failed
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
	code, failed := readyz(t, map[string]Check{"a": waitFor(aStarted, bStarted), "b": waitFor(bStarted, aStarted)})
	if code != http.StatusOK {
		t.Errorf("/readyz = %d, failed %v; want 200 with both checks run at once", code, failed)
	}
}

// TestReadyzAnswersWhileACheckHangs: NATS is down (its check fails at
// once) and the bucket check hangs, deaf to its context, until the test
// ends; /readyz still answers 503, naming both, the hanging one as
// unanswered within CheckTimeout. Before, the hanging check held the answer.
func TestReadyzAnswersWhileACheckHangs(t *testing.T) {
	t.Parallel()
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	code, failed := readyz(t, map[string]Check{
		"nats":     func(context.Context) error { return errors.New("NATS connection is RECONNECTING") },
		"consumer": func(context.Context) error { return nil },
		"kv": func(context.Context) error {
			<-hang
			return errors.New("answered after the test")
		},
	})
	if code != http.StatusServiceUnavailable || !strings.Contains(failed["nats"], "RECONNECTING") ||
		failed["kv"] != "no answer within "+CheckTimeout.String() {
		t.Errorf("/readyz = %d, failed %v; want 503 naming nats, and kv as unanswered", code, failed)
	}
	if _, ok := failed["consumer"]; ok {
		t.Errorf("the passing consumer check is reported failed: %v", failed)
	}
}
