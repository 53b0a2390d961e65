package integration

import (
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
)

// Reproductions of what TestRandomHistories found with bucket losses and
// PENDING between a restart request and its answer, each reduced to a
// deterministic case through serve on a real server. Each failed on the
// code before its fix (named in its comment) and passes since.

// TestRestartParkedWhileItsPendingIsRecordedIsStillFlushed: a Start right
// after REVOKED whose restart request finds the job's lease held (another
// replica's claim for the REVOKED; the same happens while the records are
// not ready after a bucket loss) is parked; the backend records PENDING of
// the new attempt meanwhile, as Antenna does before the answer, and the
// service records it. The request, handled again, must flush run 1's
// leftover and answer; the service answers `stale` (the record's newest
// event is the PENDING), so the backend gives up the Start
// (RestartSuperseded) and the leftover stays. Seen in the histories as
// "LIVENESS: restart ... answered stale" (193 of 510 histories' restarts
// with base seed 1796513553371592493). Fails at 7a72a7e (answered stale, 5
// leftover tasks); fixed by 91ed1e0 (a restart request is superseded only by
// a newer terminal status or restart request, or a later attempt).
func TestRestartParkedWhileItsPendingIsRecordedIsStillFlushed(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startService("--lease", "4s")
	e.provision(7, 5, nil)
	store, err := queue.OpenStore(t.Context(), e.js, queue.StoreConfig{Bucket: historyBucket, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Another replica's claim, for the REVOKED of attempt 1, still running.
	a1 := int64(1)
	now := time.Now()
	rec := queue.Record{Attempt: &a1, Time: now, Stored: now, EventID: "revoked-1", Status: string(events.StatusRevoked),
		State: queue.StateTerminal, Lease: &queue.Lease{Owner: "other-replica", Token: "t", TTL: 4 * time.Second, Until: now.Add(4 * time.Second)}}
	if _, err := store.Put(t.Context(), 7, rec, 0); err != nil {
		t.Fatal(err)
	}
	sub, err := e.nc.SubscribeSync("job.queue.flushed.7")
	if err != nil {
		t.Fatal(err)
	}
	e.emit(events.StatusEvent{ID: "restart-2", JobID: 7, Status: events.StatusRestartRequested, Attempt: events.Attempt(2), Time: time.Now()})
	time.Sleep(100 * time.Millisecond)
	e.emit(events.StatusEvent{ID: "pending-2", JobID: 7, Status: events.StatusPending, Attempt: events.Attempt(2), Time: time.Now()})
	res := awaitCause(t, sub, "restart-2")
	if res.Outcome != events.OutcomeRemoved || e.msgs("job_7") != -1 {
		t.Fatalf("the Start's request: %q, run 1's leftover holds %d messages (-1: gone); want removed", res.Outcome, e.msgs("job_7"))
	}
}

// TestRebuildDoesNotTakeAResentRestartForTheNewestEvent: run 2 ends
// (FAILURE of attempt 2) and the backend's outbox sends run 2's restart
// request again (same id) after it; the bucket is lost before the FAILURE
// is handled. The records rebuilt from the event stream take the re-sent
// request (same attempt, later arrival) for the job's newest event, so the
// FAILURE is judged stale and run 2's queue stays. The live handler knows
// the request as a repeat (already_done); the rebuild must too. Seen in the
// histories as "LIVENESS: job N ended failure but job_N still exists" with
// the terminal event logged "stale ... record has newer event
// N-restart_requested-..." (4 to 6 jobs in 130 bucket-loss histories).
// Fails at 7a72a7e (run 2's stream still there after 20 s); fixed by
// 91ed1e0 (the record keeps the ids of its last newest events, and the
// rebuild takes a copy for the event it repeats).
func TestRebuildDoesNotTakeAResentRestartForTheNewestEvent(t *testing.T) {
	t.Parallel()
	e := setup(t)
	svc := e.startService("--lease", "4s")
	e.provision(7, 5, events.Attempt(1))
	sub, err := e.nc.SubscribeSync("job.queue.flushed.7")
	if err != nil {
		t.Fatal(err)
	}
	restart := events.StatusEvent{ID: "restart-2", JobID: 7, Status: events.StatusRestartRequested, Attempt: events.Attempt(2), Time: time.Now()}
	e.emit(restart)
	awaitCause(t, sub, "restart-2")
	e.provision(7, 3, events.Attempt(2))
	if err := svc.stop(); err != nil {
		t.Fatal(err)
	}
	e.emit(events.StatusEvent{ID: "failure-2", JobID: 7, Status: events.StatusFailure, Attempt: events.Attempt(2), Time: time.Now()})
	e.emit(restart) // the outbox sends the request again
	if err := e.js.DeleteKeyValue(t.Context(), historyBucket); err != nil {
		t.Fatal(err)
	}
	e.startService("--lease", "4s")
	eventually(t, 20*time.Second, "run 2's stream removed after its FAILURE", func() bool { return e.msgs("job_7") == -1 })
}

// TestStragglerAfterEventStreamLossDoesNotLetTheReconcilerRemoveALaterRun
// shows how a later run of a job whose streams are not stamped (here a job
// without attempts) is removed after `flush nats` (event stream and bucket
// deleted): a replica that held REVOKED of run 1 (parked, or frozen) when
// the event stream went handles it afterwards. The records, rebuilt from the
// new event stream, do not know run 2's restart request, so the REVOKED is
// taken as the job's newest event; its own fence keeps run 2
// (kept_later_run), but the reconciler then removes run 2's stream as
// "created after the job ended, with no restart since". The history test
// counts such deletions as outside the promise (unstamped streams after an
// event-stream loss). Fails at 3084977's parent (the straggler answered
// kept_later_run, then run 2's stream gone); fixed by 3084977 and 6986f00:
// an event stored before the event stream the records were rebuilt from is
// not acted on by any replica (lost_with_stream).
func TestStragglerAfterEventStreamLossDoesNotLetTheReconcilerRemoveALaterRun(t *testing.T) {
	t.Parallel()
	e := setup(t)
	at := newArrival(t, e.js)
	e.startService("--lease", "4s", "--reconcile-interval", "500ms", "--reconcile-grace", "1s")
	e.provision(7, 5, nil)
	revoked := at.event(t, "revoked-1", events.StatusRevoked, 1)
	revoked.HasAttempt, revoked.Attempt = false, 0 // the job sends no attempt
	time.Sleep(10 * time.Millisecond)
	sub, err := e.nc.SubscribeSync("job.queue.flushed.7")
	if err != nil {
		t.Fatal(err)
	}
	e.emit(events.StatusEvent{ID: "restart-2", JobID: 7, Status: events.StatusRestartRequested, Time: time.Now()})
	awaitCause(t, sub, "restart-2")
	e.provision(7, 9, nil) // run 2
	if err := e.js.DeleteStream(t.Context(), "JOB_EVENTS"); err != nil {
		t.Fatal(err)
	}
	if err := e.js.DeleteKeyValue(t.Context(), historyBucket); err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second) // both recreated, the records rebuilt from the new, empty event stream
	// The straggler: the replica that held REVOKED of run 1 handles it now.
	store, err := queue.OpenStore(t.Context(), e.js, queue.StoreConfig{Bucket: historyBucket, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg := handlers.DefaultConfig("straggler")
	cfg.Lease, cfg.Quarantine = 4*time.Second, 0
	// A replica as serve builds it: its records are rebuilt from the event
	// stream (the new one, which does not hold the straggler).
	decoder := events.NewDecoder("job.status.", 1<<16, func(s events.Status) bool {
		return s == events.StatusRestartRequested || s == events.StatusRevoked
	})
	var rb *handlers.Rebuilder
	h := handlers.New(queue.NewJanitor(e.js, e.names), store, &answers{}, cfg,
		handlers.WithRebuild(events.NewReplayer(e.js, "JOB_EVENTS", "queue-janitor", decoder), store, zerolog.New(zerolog.NewTestWriter(t)), &rb))
	out, err := h.Handle(t.Context(), revoked)
	for errors.Is(err, handlers.ErrNotReady) {
		_ = rb.Ensure(t.Context())
		out, err = h.Handle(t.Context(), revoked)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the straggling REVOKED of run 1: %s", out.Result)
	if out.Result != events.ResultLostWithStream {
		t.Errorf("the straggling REVOKED of run 1 was %s; want it not acted on (%s)", out.Result, events.ResultLostWithStream)
	}
	time.Sleep(4 * time.Second) // reconciler passes
	if got := e.msgs("job_7"); got != 9 {
		t.Fatalf("run 2's stream holds %d messages (-1: gone); want its 9 tasks", got)
	}
}
