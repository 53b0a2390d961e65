package integration

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
)

// pausingReplay is the real event stream replay, held (once armed) just
// after it read the service consumer's ack floor: a rebuild slowed between
// its two reads.
type pausingReplay struct {
	*events.Replayer
	armed  atomic.Bool
	held   chan struct{}
	resume chan struct{}
}

func (p *pausingReplay) AckFloor(ctx context.Context) (uint64, time.Time, error) {
	floor, born, err := p.Replayer.AckFloor(ctx)
	if p.armed.CompareAndSwap(true, false) {
		close(p.held)
		<-p.resume
	}
	return floor, born, err
}

// TestRebuildAcrossAnEventStreamLossKeepsARestartUnanswered is the open
// finding of the random histories on a real server. The rebuild reads the
// service consumer's ack floor (5: the old event stream's five events were
// handled); `flush nats` then deletes the event stream, the service
// recreates it, and the backend's restart request for job 7 lands in it at
// sequence 1, not yet handled. The rebuild reads that stream's events: with
// the old stream's floor, sequence 1 counts as acknowledged, so the record
// says the restart's flush is done, and the request is answered
// already_done over run 1's five leftover tasks. The floor must be read
// from the stream the events are read from.
func TestRebuildAcrossAnEventStreamLossKeepsARestartUnanswered(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ensureEventStream(t, e.js)
	ackEvents(t, e, 8, 5) // the old stream: five events of job 8, handled

	store, err := queue.OpenStore(t.Context(), e.js, queue.StoreConfig{Bucket: "rebuild_jobs", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg := handlers.DefaultConfig("A")
	cfg.Lease, cfg.Quarantine = 4*time.Second, 2*time.Second
	decoder := events.NewDecoder("job.status.", 1<<16, func(s events.Status) bool {
		return s == events.StatusRestartRequested || s == events.StatusRevoked
	})
	replay := &pausingReplay{Replayer: events.NewReplayer(e.js, "JOB_EVENTS", "queue-janitor", decoder),
		held: make(chan struct{}), resume: make(chan struct{})}
	var rb *handlers.Rebuilder
	a := handlers.New(queue.NewJanitor(e.js, e.names), store, &answers{}, cfg,
		handlers.WithRebuild(replay, store, zerolog.New(zerolog.NewTestWriter(t)), &rb))

	e.provision(7, 5, nil) // run 1's leftover: five tasks
	replay.armed.Store(true)
	rebuilt := make(chan error, 1)
	go func() { rebuilt <- rb.Ensure(t.Context()) }()
	select {
	case <-replay.held:
	case <-time.After(time.Minute):
		t.Fatal("the rebuild did not read the ack floor within a minute")
	}
	if err := e.js.DeleteStream(t.Context(), "JOB_EVENTS"); err != nil { // flush nats
		t.Fatal(err)
	}
	ensureEventStream(t, e.js) // recreated
	restart := storedEvent(t, e, "restart-2", events.StatusRestartRequested, 2)
	close(replay.resume)
	err = <-rebuilt
	t.Logf("the rebuild that straddled the loss: %v", err)

	out := handleWhenReady(t, a, rb, restart)
	t.Logf("the restart of attempt 2: decision %s, result %s", out.Decision, out.Result)
	if got := e.msgs("job_7"); got > 0 {
		t.Fatalf("run 1's stream still holds %d tasks after the restart was answered %s; want them flushed", got, out.Result)
	}
	if out.Result != events.OutcomeRemoved {
		t.Errorf("the restart of attempt 2: %s; want removed", out.Result)
	}
}

// ackEvents publishes n events of job id into the event stream and has the
// service's durable consumer acknowledge them, so that its ack floor covers
// them.
func ackEvents(t *testing.T, e *env, id queue.JobID, n int) {
	t.Helper()
	for i := range n {
		ev := events.StatusEvent{ID: "started-" + string(rune('a'+i)), JobID: id, Status: events.StatusStarted, Time: time.Now()}
		msg, err := ev.Msg(t.Context(), "job.status.")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.js.PublishMsg(t.Context(), msg); err != nil {
			t.Fatal(err)
		}
	}
	c, err := e.js.CreateOrUpdateConsumer(t.Context(), "JOB_EVENTS", jetstream.ConsumerConfig{
		Durable: "queue-janitor", AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.Fetch(n, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	acked := 0
	for msg := range batch.Messages() {
		if err := msg.DoubleAck(t.Context()); err != nil {
			t.Fatal(err)
		}
		acked++
	}
	if acked != n {
		t.Fatalf("acknowledged %d of %d events", acked, n)
	}
}
