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

// pausingReplay is the real event stream replay, held once, when armed, at
// one point of a rebuild: just after its first read of the service
// consumer's ack floor, or just after its read of the events.
type pausingReplay struct {
	*events.Replayer
	afterFloor, afterEvents atomic.Bool
	held                    chan struct{}
	resume                  chan struct{}
}

func (p *pausingReplay) AckFloor(ctx context.Context) (uint64, time.Time, error) {
	floor, born, err := p.Replayer.AckFloor(ctx)
	p.pause(&p.afterFloor)
	return floor, born, err
}

func (p *pausingReplay) Events(ctx context.Context, fn func(uint64, events.JobStatus)) (uint64, time.Time, error) {
	last, born, err := p.Replayer.Events(ctx, fn)
	p.pause(&p.afterEvents)
	return last, born, err
}

func (p *pausingReplay) pause(armed *atomic.Bool) {
	if armed.CompareAndSwap(true, false) {
		close(p.held)
		<-p.resume
	}
}

// TestRebuildAcrossAnEventStreamLoss: a rebuild is held while `flush nats`
// deletes the event stream and the intake creates it again.
//
// Held after it read the ack floor (5: the old stream's five events were
// handled), with the backend's restart request for job 7 landing in the new
// stream at sequence 1, not yet handled: with the old stream's floor,
// sequence 1 counted as acknowledged, so the record said the restart's flush
// was done and the request was answered already_done over run 1's five
// leftover tasks (the random histories' last finding). The floor must be
// read on the stream the events are read from.
//
// Held after it read the events, with job 7's REVOKED in the old stream
// still held by a replica: the rebuild must count from the new stream, so
// that the held event is known to come from a deleted stream, whose
// successor's records know neither it nor what followed it, and is not
// acted on (lost_with_stream); marked rebuilt from the old stream, it
// removed run 1's queue.
func TestRebuildAcrossAnEventStreamLoss(t *testing.T) {
	t.Parallel()
	t.Run("after the ack floor: the restart in the new stream is flushed", func(t *testing.T) {
		t.Parallel()
		e, a, rb, replay := rebuildSetup(t)
		replay.afterFloor.Store(true)
		var restart events.JobStatus
		rebuildAcrossLoss(t, e, rb, replay, func() {
			restart = storedEvent(t, e, "restart-2", events.StatusRestartRequested, 2)
		})
		out := handleWhenReady(t, a, rb, restart)
		t.Logf("the restart of attempt 2: decision %s, result %s", out.Decision, out.Result)
		if got := e.msgs("job_7"); got > 0 {
			t.Fatalf("run 1's stream still holds %d tasks after the restart was answered %s; want them flushed", got, out.Result)
		}
		if out.Result != events.OutcomeRemoved {
			t.Errorf("the restart of attempt 2: %s; want removed", out.Result)
		}
	})
	t.Run("after the events: an event held from the old stream is not acted on", func(t *testing.T) {
		t.Parallel()
		e, a, rb, replay := rebuildSetup(t)
		held := storedEvent(t, e, "revoked-1", events.StatusRevoked, 1) // received by a replica, not handled
		replay.afterEvents.Store(true)
		rebuildAcrossLoss(t, e, rb, replay, func() {})
		out := handleWhenReady(t, a, rb, held)
		t.Logf("REVOKED 1, held from the deleted stream: decision %s, result %s", out.Decision, out.Result)
		if got := e.msgs("job_7"); got != 5 {
			t.Fatalf("job 7's stream holds %d messages (-1: gone) after an event held from the deleted stream; want its 5", got)
		}
		if out.Result != events.ResultLostWithStream {
			t.Errorf("REVOKED 1, held from the deleted stream: %s; want %s", out.Result, events.ResultLostWithStream)
		}
	})
}

// rebuildSetup is a server whose event stream holds five handled events of
// job 8, a handler over a new bucket with a rebuilder reading through a
// pausingReplay, and job 7's run 1 with five tasks.
func rebuildSetup(t *testing.T) (*env, *handlers.Handler, *handlers.Rebuilder, *pausingReplay) {
	t.Helper()
	e := setup(t)
	ensureEventStream(t, e.js)
	ackEvents(t, e, 8, 5)
	a, rb, replay := handlerOver(t, e)
	e.provision(7, 5, nil)
	return e, a, rb, replay
}

// handlerOver is a handler on e's server over a new bucket, with a
// rebuilder reading the event stream through a pausingReplay (not armed).
func handlerOver(t *testing.T, e *env) (*handlers.Handler, *handlers.Rebuilder, *pausingReplay) {
	t.Helper()
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
	return a, rb, replay
}

// rebuildAcrossLoss runs a rebuild, and while the replay holds it deletes
// the event stream, creates it again and calls then.
func rebuildAcrossLoss(t *testing.T, e *env, rb *handlers.Rebuilder, replay *pausingReplay, then func()) {
	t.Helper()
	rebuilt := make(chan error, 1)
	go func() { rebuilt <- rb.Ensure(t.Context()) }()
	select {
	case <-replay.held:
	case <-time.After(time.Minute):
		t.Fatal("the rebuild did not reach its pause within a minute")
	}
	if err := e.js.DeleteStream(t.Context(), "JOB_EVENTS"); err != nil { // flush nats
		t.Fatal(err)
	}
	ensureEventStream(t, e.js) // the intake creates it again
	then()
	close(replay.resume)
	t.Logf("the rebuild that straddled the loss: %v", <-rebuilt)
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
	ackAll(t, e, n)
}

// ackAll has the service's durable consumer acknowledge the event stream's
// n events.
func ackAll(t *testing.T, e *env, n int) {
	t.Helper()
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

// TestRebuildKeepsASupersededRestartStale: attempt 3 of job 7 started (an
// automatic retry, no restart request), then a restart request for attempt
// 2 arrived late: it was answered stale and acknowledged. The bucket is lost
// and rebuilt; the outbox publishes that request again. It is still stale:
// the rebuild must not take an acknowledged request that was superseded when
// it arrived for the restart the job's run came from (before: already_done,
// telling a backend waiting on it that attempt 2's round may be published).
func TestRebuildKeepsASupersededRestartStale(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ensureEventStream(t, e.js)
	storedEvent(t, e, "started-3", events.StatusStarted, 3)
	late := storedEvent(t, e, "restart-2", events.StatusRestartRequested, 2)
	ackAll(t, e, 2)
	a, rb, _ := handlerOver(t, e)
	e.provision(7, 5, nil) // attempt 3's tasks
	if err := rb.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	out := handleWhenReady(t, a, rb, storedEvent(t, e, "restart-2", events.StatusRestartRequested, 2))
	t.Logf("the late restart of attempt 2, published again: decision %s, result %s", out.Decision, out.Result)
	if got := e.msgs("job_7"); got != 5 {
		t.Fatalf("attempt 3's stream holds %d messages (-1: gone); want its 5", got)
	}
	if out.Decision != events.DecisionStale {
		t.Errorf("the late restart of attempt 2 (first stored %s), published again: %s %s; want stale",
			late.Stored.Format(time.RFC3339Nano), out.Decision, out.Result)
	}
}
