package events

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/integration/natstest"
)

// TestReplayLeavesOutWhatTheIntakeDeadLetters: the rebuild trusts the
// consumer's ack floor as "effect done", and the intake terminates (which
// the floor counts) the events it dead-letters. A future-dated event (a
// broken producer clock) must not become a job's newest, done event in the
// rebuilt records; one within the limit is replayed.
func TestReplayLeavesOutWhatTheIntakeDeadLetters(t *testing.T) {
	t.Parallel()
	js := eventStream(t)
	for _, ev := range []StatusEvent{
		{ID: "on-time", JobID: 7, Status: StatusRevoked, Time: time.Now().Add(10 * time.Minute)},
		{ID: "future", JobID: 7, Status: StatusRevoked, Time: time.Now().Add(2 * time.Hour)},
	} {
		msg, err := ev.Msg(t.Context(), "job.status.")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.PublishMsg(t.Context(), msg); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	r := NewReplayer(js, "JOB_EVENTS", "queue-janitor", testDecoder())
	if _, _, err := r.Events(context.Background(), func(_ uint64, ev JobStatus) { got = append(got, ev.ID) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "on-time" {
		t.Errorf("replayed %v; want [on-time] (the one two hours ahead is dead-lettered by the intake)", got)
	}
	got = nil
	if _, _, err := r.WithMaxFuture(0).Events(context.Background(), func(_ uint64, ev JobStatus) { got = append(got, ev.ID) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Errorf("with the check off, replayed %v; want both", got)
	}
}

// TestReplayCutShortIsAnError: a fetch that gets no reply ends without an
// error and without messages. The replay must not take the events it read
// until then for the whole stream (the rebuilt records would lack every
// later event, and order with them).
func TestReplayCutShortIsAnError(t *testing.T) {
	t.Parallel()
	js := eventStream(t)
	const n = replayBatch + 500
	for i := range n {
		msg, err := StatusEvent{JobID: 7, Status: StatusStarted}.Msg(t.Context(), "job.status.")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.PublishMsgAsync(msg); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		t.Fatal("publishing took over a minute")
	}
	read := 0
	r := NewReplayer(dropSecondFetch{js}, "JOB_EVENTS", "queue-janitor", testDecoder())
	last, _, err := r.Events(context.Background(), func(uint64, JobStatus) { read++ })
	t.Logf("read %d events, through sequence %d: %v", read, last, err)
	if err == nil {
		t.Fatalf("the replay read %d of %d events and said nothing; want an error (its second fetch got no reply)", read, n)
	}
}

// dropSecondFetch is a JetStream whose streams' consumers get nothing from
// their second fetch, as when its request gets no reply.
type dropSecondFetch struct{ jetstream.JetStream }

func (d dropSecondFetch) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	st, err := d.JetStream.Stream(ctx, name)
	return dropStream{st}, err
}

type dropStream struct{ jetstream.Stream }

func (s dropStream) CreateConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := s.Stream.CreateConsumer(ctx, cfg)
	return &dropConsumer{Consumer: c}, err
}

type dropConsumer struct {
	jetstream.Consumer
	fetches int
}

func (c *dropConsumer) Fetch(n int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	c.fetches++
	if c.fetches == 2 {
		return emptyBatch{}, nil
	}
	return c.Consumer.Fetch(n, opts...)
}

type emptyBatch struct{}

func (emptyBatch) Messages() <-chan jetstream.Msg {
	ch := make(chan jetstream.Msg)
	close(ch)
	return ch
}

func (emptyBatch) Error() error { return nil }

// eventStream is a server holding an empty JOB_EVENTS, and a client of it.
func eventStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv := natstest.RunServer(t)
	_, js := natstest.Connect(t, srv.URL())
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "JOB_EVENTS", Subjects: []string{"job.status.*"}}); err != nil {
		t.Fatal(err)
	}
	return js
}
