package events

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// lockedBuffer collects log lines written from several goroutines.
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

// runEnv is an Intake running on a real server, recording the ids of the
// events its handler saw.
type runEnv struct {
	js   jetstream.JetStream
	in   *Intake
	logs *lockedBuffer

	mu   sync.Mutex
	seen []string
}

// startIntake runs an Intake with cfg until the end of the test; the stream
// must exist beforehand when cfg.Bind is set.
func startIntake(t *testing.T, srv *natstest.Server, cfg IntakeConfig) *runEnv {
	t.Helper()
	nc, js := natstest.Connect(t, srv.URL())
	e := &runEnv{js: js, logs: &lockedBuffer{}}
	h := handlerFunc(func(_ context.Context, ev JobStatus) (Outcome, error) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.seen = append(e.seen, ev.ID)
		return Outcome{Decision: DecisionIgnore, Result: "ignored"}, nil
	})
	log := zerolog.New(zerolog.MultiLevelWriter(zerolog.NewTestWriter(t), e.logs))
	e.in = NewIntake(js, cfg, testDecoder(), h, NewPublisher(nc, DefaultPublisherConfig(), nil), IntakeDeps{Logger: log})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.in.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	eventually(t, "the intake to be ready", func() bool { return e.in.Ready(t.Context()) == nil })
	return e
}

// handled reports whether the handler saw the event id.
func (e *runEnv) handled(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.seen {
		if s == id {
			return true
		}
	}
	return false
}

// publishEvent publishes a started event for job 42 into the event stream.
func (e *runEnv) publishEvent(t *testing.T, id string) {
	t.Helper()
	msg, err := StatusEvent{JobID: queue.JobID(42), Status: StatusStarted, ID: id}.Msg(t.Context(), "job.status.")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.PublishMsg(t.Context(), msg); err != nil {
		t.Fatalf("publish %s: %v", id, err)
	}
}

func (e *runEnv) streamConfig(t *testing.T) (jetstream.StreamConfig, bool) {
	t.Helper()
	s, err := e.js.Stream(t.Context(), "JOB_EVENTS")
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return jetstream.StreamConfig{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().Config, true
}

func (e *runEnv) consumerConfig(t *testing.T) (jetstream.ConsumerConfig, bool) {
	t.Helper()
	c, err := e.js.Consumer(t.Context(), "JOB_EVENTS", "queue-janitor")
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return jetstream.ConsumerConfig{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return c.CachedInfo().Config, true
}

// TestIntakeRecreatesDeletedResources: the backend's tooling deletes the
// durable consumer, or the whole event stream (which takes the consumer
// with it). The running intake notices, recreates both as they were, says
// so in the log, and takes events again without a restart.
func TestIntakeRecreatesDeletedResources(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		delete  func(t *testing.T, js jetstream.JetStream) error
		wantLog string
	}{
		{"consumer", func(t *testing.T, js jetstream.JetStream) error {
			t.Helper()
			return js.DeleteConsumer(t.Context(), "JOB_EVENTS", "queue-janitor")
		}, "event consumer was deleted on the server; recreated"},
		{"stream", func(t *testing.T, js jetstream.JetStream) error {
			t.Helper()
			return js.DeleteStream(t.Context(), "JOB_EVENTS")
		}, "event stream JOB_EVENTS was deleted; events not yet handled are lost; recreated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := natstest.RunServer(t)
			cfg := DefaultIntakeConfig()
			cfg.AckWait = 2 * time.Second
			e := startIntake(t, srv, cfg)
			e.publishEvent(t, "before")
			eventually(t, "the event before the deletion to be handled", func() bool { return e.handled("before") })
			wantStream, _ := e.streamConfig(t)
			wantConsumer, _ := e.consumerConfig(t)

			if err := tc.delete(t, e.js); err != nil {
				t.Fatal(err)
			}
			// Meanwhile Ready says what happened and what is being done.
			eventually(t, "Ready to give the reason", func() bool {
				err := e.in.Ready(t.Context())
				return err != nil && strings.Contains(err.Error(), "event consumer JOB_EVENTS/queue-janitor lost on the server; recreating it")
			})
			eventually(t, "the stream and consumer to be recreated", func() bool {
				_, s := e.streamConfig(t)
				_, c := e.consumerConfig(t)
				return s && c && e.in.Ready(t.Context()) == nil
			})
			gotStream, _ := e.streamConfig(t)
			gotConsumer, _ := e.consumerConfig(t)
			if !streamConfigEqual(gotStream, wantStream) {
				t.Errorf("recreated stream = %+v\nwant as created at start: %+v", gotStream, wantStream)
			}
			if !consumerConfigEqual(gotConsumer, wantConsumer) {
				t.Errorf("recreated consumer = %+v\nwant as created at start: %+v", gotConsumer, wantConsumer)
			}
			e.publishEvent(t, "after")
			eventually(t, "the event after the deletion to be handled", func() bool { return e.handled("after") })
			if !strings.Contains(e.logs.String(), tc.wantLog) {
				t.Errorf("log lacks %q:\n%s", tc.wantLog, e.logs.String())
			}
		})
	}
}

// TestIntakeBindWaitsForDeletedStream: with Bind the intake never creates
// the event stream. When it is deleted, Ready says so (which stream, what
// is being done) until the backend creates it again; then the intake binds
// and takes events, leaving the backend's configuration as it is.
func TestIntakeBindWaitsForDeletedStream(t *testing.T) {
	t.Parallel()
	srv := natstest.RunServer(t)
	_, js := natstest.Connect(t, srv.URL())
	backend := jetstream.StreamConfig{Name: "JOB_EVENTS", Subjects: []string{"job.status.*"},
		Storage: jetstream.MemoryStorage, MaxAge: 3 * time.Hour, Description: "owned by the backend"}
	if _, err := js.CreateStream(t.Context(), backend); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultIntakeConfig()
	cfg.Bind = true
	e := startIntake(t, srv, cfg)

	if err := js.DeleteStream(t.Context(), "JOB_EVENTS"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Ready to report the missing stream", func() bool {
		err := e.in.Ready(t.Context())
		return err != nil && strings.Contains(err.Error(), `event stream "JOB_EVENTS" was deleted`) &&
			strings.Contains(err.Error(), "waiting for it to be created again")
	})
	// Give it time to (wrongly) create the stream: several recovery attempts.
	time.Sleep(2 * time.Second)
	if got, ok := e.streamConfig(t); ok {
		t.Fatalf("with Bind the intake created the event stream: %+v", got)
	}
	if err := e.in.Ready(t.Context()); err == nil {
		t.Fatal("Ready = nil while the bound event stream does not exist")
	}

	if _, err := js.CreateStream(t.Context(), backend); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the intake to bind again", func() bool { return e.in.Ready(t.Context()) == nil })
	e.publishEvent(t, "after")
	eventually(t, "the event after the stream came back to be handled", func() bool { return e.handled("after") })
	if got, _ := e.streamConfig(t); got.Storage != jetstream.MemoryStorage || got.MaxAge != 3*time.Hour {
		t.Errorf("the intake changed the backend's stream: %+v", got)
	}
	if want := "--bind-event-stream: not recreating it"; !strings.Contains(e.logs.String(), want) {
		t.Errorf("log lacks %q:\n%s", want, e.logs.String())
	}
}

func streamConfigEqual(a, b jetstream.StreamConfig) bool {
	return a.Name == b.Name && strings.Join(a.Subjects, ",") == strings.Join(b.Subjects, ",") && a.Storage == b.Storage &&
		a.Retention == b.Retention && a.MaxAge == b.MaxAge && a.Replicas == b.Replicas && a.Duplicates == b.Duplicates &&
		a.Description == b.Description
}

func consumerConfigEqual(a, b jetstream.ConsumerConfig) bool {
	backoff := func(c jetstream.ConsumerConfig) string {
		var s []string
		for _, d := range c.BackOff {
			s = append(s, d.String())
		}
		return strings.Join(s, ",")
	}
	return a.Durable == b.Durable && a.AckPolicy == b.AckPolicy && a.AckWait == b.AckWait && a.MaxDeliver == b.MaxDeliver &&
		backoff(a) == backoff(b) && strings.Join(a.FilterSubjects, ",") == strings.Join(b.FilterSubjects, ",") &&
		a.DeliverPolicy == b.DeliverPolicy && a.MaxAckPending == b.MaxAckPending && a.Description == b.Description
}

// TestIntakeWatchNoticesWithoutServerNotice: with no pull request to carry
// the server's notice (none is running here), the periodic check alone
// finds the consumer gone, whether it or its stream was deleted, and keeps
// quiet while it exists.
func TestIntakeWatchNoticesWithoutServerNotice(t *testing.T) {
	t.Parallel()
	for _, stream := range []bool{false, true} {
		srv := natstest.RunServer(t)
		nc, js := natstest.Connect(t, srv.URL())
		in := NewIntake(js, DefaultIntakeConfig(), testDecoder(), nil, NewPublisher(nc, DefaultPublisherConfig(), nil),
			IntakeDeps{Logger: zerolog.New(zerolog.NewTestWriter(t))})
		cons, err := in.Ensure(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if in.consumerGone(t.Context(), cons) {
			t.Fatal("consumerGone = true for a consumer that exists")
		}
		if stream {
			err = js.DeleteStream(t.Context(), "JOB_EVENTS")
		} else {
			err = js.DeleteConsumer(t.Context(), "JOB_EVENTS", "queue-janitor")
		}
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 3*watchEvery)
		done := in.watch(ctx, cons)
		cancel()
		if done {
			t.Errorf("stream deleted %v: watch did not notice the consumer gone within %s", stream, 3*watchEvery)
		}
	}
}
