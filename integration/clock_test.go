package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
)

// These tests drive the handler directly against a real server, with
// events whose producer clocks are ten minutes off either way. What the
// server stamps (a stream's creation, an event's arrival in a stream) is
// real; only the producer's `time` is skewed.

// answers records what the handler announced.
type answers struct {
	mu  sync.Mutex
	all []events.QueueResult
}

func (a *answers) Cleaned(_ context.Context, r events.QueueResult) error { return a.add(r) }
func (a *answers) Flushed(_ context.Context, r events.QueueResult) error { return a.add(r) }
func (a *answers) add(r events.QueueResult) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.all = append(a.all, r)
	return nil
}

func (a *answers) last(t *testing.T) events.QueueResult {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.all) == 0 {
		t.Fatal("nothing was answered")
	}
	return a.all[len(a.all)-1]
}

type clockWorld struct {
	*env
	h     *handlers.Handler
	store *queue.Store
	out   *answers
}

func setupClocks(t *testing.T) *clockWorld {
	t.Helper()
	e := setup(t)
	ctx := t.Context()
	store, err := queue.OpenStore(ctx, e.js, queue.StoreConfig{Bucket: "clock_jobs", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "ARRIVALS", Subjects: []string{"arrive.>"}}); err != nil {
		t.Fatal(err)
	}
	out := &answers{}
	cfg := handlers.DefaultConfig("clock-test")
	cfg.Quarantine = 0 // the test's server started empty
	h := handlers.New(queue.NewJanitor(e.js, e.names), store, out, cfg)
	return &clockWorld{env: e, h: h, store: store, out: out}
}

// arrive makes ev reach the server as the intake would see it: stored in a
// stream, with the server's timestamp as ev.Stored. The producer's clock is
// off by skew.
func (w *clockWorld) arrive(t *testing.T, status events.Status, skew time.Duration) events.JobStatus {
	t.Helper()
	ack, err := w.js.Publish(t.Context(), "arrive."+string(status), []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := w.js.Stream(t.Context(), "ARRIVALS")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := msg.GetMsg(t.Context(), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	return events.JobStatus{ID: uuid.NewString(), JobID: 7, Status: status, Time: raw.Time.Add(skew), Stored: raw.Time}
}

func (w *clockWorld) handle(t *testing.T, ev events.JobStatus) events.Outcome {
	t.Helper()
	out, err := w.h.Handle(t.Context(), ev)
	if err != nil {
		t.Fatalf("Handle %s: %v", ev.Status, err)
	}
	return out
}

// createRun creates job 7's queue as the backend does (unstamped).
func (w *clockWorld) createRun(t *testing.T, tasks int) time.Time {
	t.Helper()
	w.provision(7, tasks, nil)
	info, err := w.js.Stream(t.Context(), "job_7")
	if err != nil {
		t.Fatal(err)
	}
	return info.CachedInfo().Created
}

var skews = []time.Duration{-10 * time.Minute, 0, 10 * time.Minute}

// TestRestartFlushesALeftoverCreatedJustBefore: a leftover stream created
// the instant before the restart request reached NATS is flushed, whatever
// the backend's clock says; the answer never says kept_later_run for it.
func TestRestartFlushesALeftoverCreatedJustBefore(t *testing.T) {
	t.Parallel()
	for _, skew := range skews {
		t.Run(fmt.Sprint(skew), func(t *testing.T) {
			t.Parallel()
			w := setupClocks(t)
			created := w.createRun(t, 5)
			ev := w.arrive(t, events.StatusRestartRequested, skew)
			t.Logf("stream created %s before the request arrived", ev.Stored.Sub(created))
			out := w.handle(t, ev)
			if got := w.out.last(t); out.Result != events.OutcomeRemoved || got.Outcome != events.OutcomeRemoved || got.MessagesDiscarded != 5 {
				t.Fatalf("restart with the producer's clock %s off: result %q, answer %+v; want removed, 5 messages", skew, out.Result, got)
			}
			if streamExists(t, w.js, "job_7") {
				t.Fatal("the leftover is still there: the new round would be published on top of it")
			}
		})
	}
}

// TestTerminalRightAfterCreationRemovesAtOnce: a job that fails while its
// queue is being created (the stream made just before FAILURE reached NATS)
// is cleaned by the event itself, not left to the reconciler.
func TestTerminalRightAfterCreationRemovesAtOnce(t *testing.T) {
	t.Parallel()
	for _, skew := range skews {
		t.Run(fmt.Sprint(skew), func(t *testing.T) {
			t.Parallel()
			w := setupClocks(t)
			w.createRun(t, 3)
			out := w.handle(t, w.arrive(t, events.StatusFailure, skew))
			if out.Result != events.OutcomeRemoved || streamExists(t, w.js, "job_7") {
				t.Fatalf("FAILURE with the producer's clock %s off: result %q; want removed and the stream gone", skew, out.Result)
			}
		})
	}
}

// TestRedeliveredRestartKeepsTheNewRun: a restart request handled, answered,
// then delivered again after the backend created run 2 (a crash before the
// ack). With its record the second delivery is answered already_done; even
// with the record gone (a bucket reset) the fence keeps run 2, created after
// the request first reached NATS, whatever the backend's clock.
func TestRedeliveredRestartKeepsTheNewRun(t *testing.T) {
	t.Parallel()
	for _, skew := range skews {
		t.Run(fmt.Sprint(skew), func(t *testing.T) {
			t.Parallel()
			w := setupClocks(t)
			w.createRun(t, 4)
			ev := w.arrive(t, events.StatusRestartRequested, skew)
			w.handle(t, ev)
			w.createRun(t, 9) // run 2, after flushed

			if out := w.handle(t, ev); out.Result != events.OutcomeAlreadyDone {
				t.Errorf("redelivery with the record: %q, want already_done", out.Result)
			}
			kv, err := w.js.KeyValue(t.Context(), "clock_jobs")
			if err != nil {
				t.Fatal(err)
			}
			if err := kv.Delete(t.Context(), queue.JobKey(7)); err != nil {
				t.Fatal(err)
			}
			out := w.handle(t, ev)
			info, err := w.js.Stream(t.Context(), "job_7")
			if err != nil || info.CachedInfo().State.Msgs != 9 {
				t.Fatalf("redelivery without the record (clock %s off): %+v; run 2's stream: %v", skew, out, err)
			}
			if out.Result != events.OutcomeKeptLaterRun {
				t.Errorf("result %q, want kept_later_run", out.Result)
			}
		})
	}
}

// TestLateTerminalFromAClockAheadIsStale: without attempts, FAILURE of run
// 1 from a host ten minutes ahead reaches NATS before the restart request
// from a host ten minutes behind, but is handled after it. It is stale: run
// 2's stream survives.
func TestLateTerminalFromAClockAheadIsStale(t *testing.T) {
	t.Parallel()
	w := setupClocks(t)
	w.createRun(t, 4)
	failure := w.arrive(t, events.StatusFailure, 10*time.Minute)
	restart := w.arrive(t, events.StatusRestartRequested, -10*time.Minute)
	if out := w.handle(t, restart); out.Result != events.OutcomeRemoved {
		t.Fatalf("restart: %+v", out)
	}
	w.createRun(t, 6)
	if out := w.handle(t, failure); out.Decision != events.DecisionStale {
		t.Errorf("late FAILURE of run 1: %+v, want stale", out)
	}
	info, err := w.js.Stream(t.Context(), "job_7")
	if err != nil || info.CachedInfo().State.Msgs != 6 {
		t.Fatalf("run 2's stream after the late FAILURE: %v", err)
	}
}

// TestFutureDatedEventIsDeadLettered: an event dated beyond
// --max-event-future of its arrival is dead-lettered with future_time and
// does not wedge the job: a later restart is answered flushed.
func TestFutureDatedEventIsDeadLettered(t *testing.T) {
	t.Parallel()
	e := setup(t)
	dead := subscribe(t, e.nc, "job.deadletter.status")
	flushed := subscribe(t, e.nc, "job.queue.flushed.9")
	startServe(t, e.js, baseArgs(e.url), zerolog.NewTestWriter(t))
	e.emit(events.StatusEvent{JobID: 9, Status: events.StatusRevoked, Time: time.Now().Add(2 * time.Hour)})
	got := answerFor(t, dead, 30*time.Second, "the dead letter", func(a emitted) bool { return a.DeadLetter.Reason != "" })
	if got.DeadLetter.Reason != events.ReasonFutureTime {
		t.Fatalf("dead letter reason %q, want %q", got.DeadLetter.Reason, events.ReasonFutureTime)
	}
	e.emit(events.StatusEvent{JobID: 9, Status: events.StatusRestartRequested})
	if a := answerFor(t, flushed, 30*time.Second, "flushed", func(a emitted) bool { return a.Data.Outcome != "" }); a.Data.Outcome == events.OutcomeStale {
		t.Fatal("the restart after a future-dated event was answered stale")
	}
}
