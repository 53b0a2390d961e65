package queue

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/example/queue-janitor/integration/natstest"
)

// outagePolicy is the brief's policy for riding out a server restart.
func outagePolicy() RetryPolicy {
	return RetryPolicy{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond,
		MaxElapsed: 20 * time.Second, AttemptTimeout: time.Second}
}

// retryCounter is a RetryObserver that counts the retries it is told of.
func retryCounter() (RetryObserver, *atomic.Int64) {
	var n atomic.Int64
	return func(context.Context, string, int, error, time.Duration) { n.Add(1) }, &n
}

func TestRemoveRidesOutAServerRestart(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 5, nil)
	observer, retries := retryCounter()
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	j := NewJanitor(e.js, e.names, WithRetryPolicy(outagePolicy()), WithRetryObserver(observer), WithTracer(tp.Tracer("t")))

	e.srv.Stop()
	type result struct {
		r   Removal
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := j.Remove(t.Context(), 1, openFence(), nil)
		done <- result{r, err}
	}()
	// Restart only once the outage has been seen, so that the retry path is
	// what brings the call through.
	eventually(t, 10*time.Second, "a retry during the outage", func() bool { return retries.Load() >= 1 })
	e.srv.Restart(t)

	var res result
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Remove did not return within 30s of the restart")
	}
	if res.err != nil {
		t.Fatalf("Remove: %v", res.err)
	}
	assertRemoval(t, res.r, removedJob1(5, 2))
	if e.streamMsgs("job_1") != -1 {
		t.Error("stream job_1 still exists")
	}
	if retries.Load() < 1 {
		t.Errorf("observer saw %d retries, want at least 1", retries.Load())
	}
	assertRetrySpans(t, sr.Ended(), "jetstream.stream_info")
}

// assertRetrySpans checks that op, called outside any span, was tried more
// than once: its own span records each failed attempt as an event
// "<op> failed" (with retry.attempt and the error), counts the attempts, and
// has no error status since the last try succeeded.
func assertRetrySpans(t *testing.T, spans []sdktrace.ReadOnlySpan, op string) {
	t.Helper()
	var action sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == op && failedAttempts(s, op) > 0 {
			action = s
		}
	}
	if action == nil {
		t.Fatalf("%s: no span with a failed attempt, want a retried call", op)
	}
	if action.Status().Code == codes.Error {
		t.Errorf("%s: the call succeeded in the end, but its span has an error status", op)
	}
	var n int64 = -1
	for _, kv := range action.Attributes() {
		if kv.Key == "retry.attempts" {
			n = kv.Value.AsInt64()
		}
	}
	if failed := failedAttempts(action, op); n != int64(failed+1) {
		t.Errorf("%s retry.attempts = %d, want %d (failed attempts + the last)", op, n, failed+1)
	}
}

// failedAttempts counts the "<op> failed" events on s, each with its attempt
// number and error.
func failedAttempts(s sdktrace.ReadOnlySpan, op string) int {
	n := 0
	for _, ev := range s.Events() {
		if ev.Name != op+" failed" {
			continue
		}
		var attempt, msg bool
		for _, kv := range ev.Attributes {
			attempt = attempt || kv.Key == "retry.attempt"
			msg = msg || kv.Key == "error" && kv.Value.AsString() != ""
		}
		if attempt && msg {
			n++
		}
	}
	return n
}

func TestRemoveStopsAtOnceOnAClosedConnection(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 2, nil)
	nc, js := natstest.Connect(t, e.srv.URL())
	nc.Close()
	observer, retries := retryCounter()
	j := NewJanitor(js, e.names, WithRetryPolicy(outagePolicy()), WithRetryObserver(observer))

	// A generous bound, far below MaxElapsed (20s): a retried permanent
	// error would run into it.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	r, err := j.Remove(ctx, 1, openFence(), nil)
	if !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, jetstream.ErrConnectionClosed) {
		t.Fatalf("Remove = %v; want a closed-connection error", err)
	}
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Fatalf("Remove ran into the context deadline: %v", err)
	}
	if retries.Load() != 0 {
		t.Errorf("observer saw %d retries of a permanent error, want 0", retries.Load())
	}
	if r.StreamFound || r.Removed() || e.streamMsgs("job_1") != 2 {
		t.Errorf("Removal = %+v; the queue must be untouched", r)
	}
}
