package queue

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/integration/natstest"
)

// testEnv is one test's world: an embedded JetStream server and a client
// that plays the backend.
type testEnv struct {
	t     *testing.T
	srv   *natstest.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	names Names
}

func setup(t *testing.T) *testEnv {
	t.Helper()
	srv := natstest.RunServer(t)
	nc, js := natstest.Connect(t, srv.URL())
	return &testEnv{t: t, srv: srv, nc: nc, js: js, names: DefaultNames()}
}

// fastRetry keeps tests quick when a call does fail.
func fastRetry() RetryPolicy {
	return RetryPolicy{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond,
		MaxElapsed: 10 * time.Second, AttemptTimeout: 5 * time.Second}
}

// janitor returns a Janitor on the test's connection with default names.
func (e *testEnv) janitor(opts ...Option) *Janitor {
	e.t.Helper()
	return NewJanitor(e.js, e.names, append([]Option{WithRetryPolicy(fastRetry())}, opts...)...)
}

// provision creates job id's queue as the backend does and publishes msgs
// tasks onto it.
func (e *testEnv) provision(id JobID, msgs int, attempt *int64) {
	e.t.Helper()
	if err := Provision(e.t.Context(), e.js, e.names, id, attempt); err != nil {
		e.t.Fatalf("provision job %d: %v", id, err)
	}
	e.publish(e.names.SubjectName(id), msgs)
}

func (e *testEnv) publish(subject string, msgs int) {
	e.t.Helper()
	for i := range msgs {
		if _, err := e.js.Publish(e.t.Context(), subject, fmt.Appendf(nil, "task %d", i)); err != nil {
			e.t.Fatalf("publish %s: %v", subject, err)
		}
	}
}

// streamMsgs returns the stream's message count, or -1 when it is gone.
func (e *testEnv) streamMsgs(name string) int64 {
	e.t.Helper()
	s, err := e.js.Stream(e.t.Context(), name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return -1
	}
	if err != nil {
		e.t.Fatalf("stream %s: %v", name, err)
	}
	return int64(s.CachedInfo().State.Msgs)
}

func (e *testEnv) consumerExists(stream, name string) bool {
	e.t.Helper()
	_, err := e.js.Consumer(e.t.Context(), stream, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return false
	}
	if err != nil {
		e.t.Fatalf("consumer %s/%s: %v", stream, name, err)
	}
	return true
}

func (e *testEnv) streamInfo(name string) *jetstream.StreamInfo {
	e.t.Helper()
	s, err := e.js.Stream(e.t.Context(), name)
	if err != nil {
		e.t.Fatalf("stream %s: %v", name, err)
	}
	return s.CachedInfo()
}

func (e *testEnv) consumerInfo(stream, name string) *jetstream.ConsumerInfo {
	e.t.Helper()
	c, err := e.js.Consumer(e.t.Context(), stream, name)
	if err != nil {
		e.t.Fatalf("consumer %s/%s: %v", stream, name, err)
	}
	return c.CachedInfo()
}

// waitUntilAfter polls until the wall clock is strictly after ts, so that a
// resource created next is certainly newer. It decides nothing by itself.
func waitUntilAfter(t *testing.T, ts time.Time) {
	t.Helper()
	eventually(t, 5*time.Second, "clock past "+ts.String(), func() bool { return time.Now().After(ts) })
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }
