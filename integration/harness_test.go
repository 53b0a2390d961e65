package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/cmd/queue-janitor/cli"
	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// env is one test's world: a NATS server and a client as the backend.
type env struct {
	t     *testing.T
	srv   *natstest.Server
	url   string
	nc    *nats.Conn
	js    jetstream.JetStream
	names queue.Names
}

func setup(t *testing.T) *env {
	t.Helper()
	srv := natstest.RunServer(t)
	nc, js := natstest.Connect(t, srv.URL())
	return &env{t: t, srv: srv, url: srv.URL(), nc: nc, js: js, names: queue.DefaultNames()}
}

// service is a queue-janitor serve process running in-process.
type service struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// baseArgs are the serve flags every test uses.
func baseArgs(url string) []string {
	return []string{"serve", "--nats-url", url, "--log-format", "json", "--log-level", "debug",
		"--http-addr", "", "--reconcile-interval", "0", "--ack-wait", "5s",
		"--retry-max-elapsed", "20s", "--lease", "30s",
		// Each test starts its server empty: no earlier bucket can have held
		// a claim (the bucket-loss tests leave this out).
		"--trust-new-bucket"}
}

// startService runs `queue-janitor serve` against e's server and waits until
// its consumer is pulling. It stops at the end of the test.
func (e *env) startService(extra ...string) *service {
	e.t.Helper()
	return startServe(e.t, e.js, append(baseArgs(e.url), extra...), zerolog.NewTestWriter(e.t))
}

func startServe(t *testing.T, js jetstream.JetStream, args []string, logs io.Writer) *service {
	t.Helper()
	return startServeHooks(t, js, args, logs, cli.Hooks{})
}

// startServeHooks is startServe with telemetry hooks (span recorders,
// metric readers).
func startServeHooks(t *testing.T, js jetstream.JetStream, args []string, logs io.Writer, hooks cli.Hooks) *service {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{cancel: cancel, done: make(chan error, 1)}
	before := pullWaiting(js)
	go func() {
		s.done <- cli.RunWithHooks(ctx, args, func(string) string { return "" }, io.Discard, logs, hooks)
	}()
	t.Cleanup(func() { _ = s.stop() })
	deadline := time.Now().Add(30 * time.Second)
	for pullWaiting(js) <= before {
		select {
		case err := <-s.done:
			s.err = err
			s.once.Do(func() {})
			t.Fatalf("serve exited early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("serve did not start pulling events within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

// pullWaiting is the number of pull requests waiting on the event consumer.
func pullWaiting(js jetstream.JetStream) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, "JOB_EVENTS", "queue-janitor")
	if err != nil {
		return 0
	}
	info, err := c.Info(ctx)
	if err != nil {
		return 0
	}
	return info.NumWaiting
}

// stop cancels the service and returns Run's error.
func (s *service) stop() error {
	s.once.Do(func() {
		s.cancel()
		select {
		case s.err = <-s.done:
		case <-time.After(60 * time.Second):
			s.err = errors.New("serve did not stop within 60s")
		}
	})
	return s.err
}

// provision creates job id's queue and publishes n tasks, as the backend
// does; attempt may be nil.
func (e *env) provision(id queue.JobID, n int, attempt *int64) {
	e.t.Helper()
	ctx := e.t.Context()
	if err := queue.Provision(ctx, e.js, e.names, id, attempt); err != nil {
		e.t.Fatalf("provision job %d: %v", id, err)
	}
	publishTasks(e.t, e.js, e.names.SubjectName(id), 0, n)
}

// publishTasks publishes tasks from..to-1 with async publishes and waits for
// every ack.
func publishTasks(tb testing.TB, js jetstream.JetStream, subject string, from, to int) {
	tb.Helper()
	const window = 1024
	var futures []jetstream.PubAckFuture
	flush := func() {
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(60 * time.Second):
			tb.Fatalf("publish to %s: acks did not arrive", subject)
		}
		for _, f := range futures {
			select {
			case err := <-f.Err():
				tb.Fatalf("publish to %s: %v", subject, err)
			default:
			}
		}
		futures = futures[:0]
	}
	for i := from; i < to; i++ {
		f, err := js.PublishAsync(subject, []byte(fmt.Sprintf(`{"task":%d}`, i)))
		if err != nil {
			tb.Fatalf("publish to %s: %v", subject, err)
		}
		futures = append(futures, f)
		if len(futures) == window {
			flush()
		}
	}
	flush()
}

// emit publishes a status event into the event stream.
func (e *env) emit(ev events.StatusEvent) {
	e.t.Helper()
	emitTo(e.t, e.js, ev)
}

func emitTo(tb testing.TB, js jetstream.JetStream, ev events.StatusEvent) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg, err := ev.Msg(ctx, "job.status.")
	if err != nil {
		tb.Fatalf("build event: %v", err)
	}
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		tb.Fatalf("publish %s: %v", msg.Subject, err)
	}
}

// ensureEventStream creates the event stream, as the service would.
func ensureEventStream(tb testing.TB, js jetstream.JetStream) {
	tb.Helper()
	_, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: "JOB_EVENTS", Subjects: []string{"job.status.*"}, Storage: jetstream.FileStorage,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		tb.Fatalf("event stream: %v", err)
	}
}

// streamExists reports whether the stream is on the server.
func streamExists(tb testing.TB, js jetstream.JetStream, name string) bool {
	tb.Helper()
	_, err := js.Stream(context.Background(), name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return false
	}
	if err != nil {
		tb.Fatalf("stream %s: %v", name, err)
	}
	return true
}

func consumerExists(tb testing.TB, js jetstream.JetStream, stream, name string) bool {
	tb.Helper()
	_, err := js.Consumer(context.Background(), stream, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return false
	}
	if err != nil {
		tb.Fatalf("consumer %s/%s: %v", stream, name, err)
	}
	return true
}

// eventually polls cond until it holds or the timeout passes.
func eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// received is a subscription that collects emitted CloudEvents.
type received struct {
	mu   sync.Mutex
	msgs []*nats.Msg
	sub  *nats.Subscription
}

func subscribe(tb testing.TB, nc *nats.Conn, subject string) *received {
	tb.Helper()
	r := &received{}
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		r.mu.Lock()
		r.msgs = append(r.msgs, m)
		r.mu.Unlock()
	})
	if err != nil {
		tb.Fatalf("subscribe %s: %v", subject, err)
	}
	if err := nc.Flush(); err != nil {
		tb.Fatalf("flush: %v", err)
	}
	r.sub = sub
	tb.Cleanup(func() { _ = sub.Unsubscribe() })
	return r
}

func (r *received) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *received) all() []*nats.Msg {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*nats.Msg(nil), r.msgs...)
}

// emitted is an event the service emitted, decoded.
type emitted struct {
	Type            string              `json:"type"`
	Subject         string              `json:"subject"`
	TraceParent     string              `json:"traceparent"`
	Data            events.QueueResult  `json:"-"`
	DeadLetter      events.DeadLetter   `json:"-"`
	RawData         json.RawMessage     `json:"data"`
	Header          map[string][]string `json:"-"`
	NATSSubjectName string              `json:"-"`
}

func decodeEmitted(tb testing.TB, m *nats.Msg) emitted {
	tb.Helper()
	var e emitted
	if err := json.Unmarshal(m.Data, &e); err != nil {
		tb.Fatalf("emitted event on %s: %v: %s", m.Subject, err, m.Data)
	}
	e.Header, e.NATSSubjectName = m.Header, m.Subject
	if strings.HasPrefix(m.Subject, "job.deadletter") {
		if err := json.Unmarshal(e.RawData, &e.DeadLetter); err != nil {
			tb.Fatalf("dead letter data: %v", err)
		}
	} else if err := json.Unmarshal(e.RawData, &e.Data); err != nil {
		tb.Fatalf("queue result data: %v", err)
	}
	return e
}

// awaitJobsGone waits until the streams of jobs 1..n are all gone.
func (e *env) awaitJobsGone(t *testing.T, n int, timeout time.Duration, what string) {
	t.Helper()
	eventually(t, timeout, what, func() bool {
		for id := queue.JobID(1); id <= queue.JobID(n); id++ {
			if streamExists(t, e.js, e.names.StreamName(id)) {
				return false
			}
		}
		return true
	})
}
