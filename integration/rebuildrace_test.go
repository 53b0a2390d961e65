package integration

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
)

// holdingRecords is the real store, with the first claim written by
// creating a record (once armed) held until released: a replica slowed
// just after its claim landed in a bucket recreated empty.
type holdingRecords struct {
	*queue.Store
	armed   atomic.Bool
	held    chan struct{}
	release chan struct{}
}

func (r *holdingRecords) Put(ctx context.Context, id queue.JobID, rec queue.Record, rev uint64) (uint64, error) {
	n, err := r.Store.Put(ctx, id, rec, rev)
	if rev == 0 && err == nil && r.armed.CompareAndSwap(true, false) {
		close(r.held)
		<-r.release
	}
	return n, err
}

// storedEvent publishes job 7's event into the event stream and returns it
// as the intake would hand it over, with its arrival in server time.
func storedEvent(t *testing.T, e *env, id string, status events.Status, attempt int64) events.JobStatus {
	t.Helper()
	ev := events.StatusEvent{ID: id, JobID: 7, Status: status, Attempt: events.Attempt(attempt), Time: time.Now()}
	msg, err := ev.Msg(t.Context(), "job.status.")
	if err != nil {
		t.Fatal(err)
	}
	msg.Header.Del("Nats-Msg-Id") // a copy published again is stored again
	ack, err := e.js.PublishMsg(t.Context(), msg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := e.js.Stream(t.Context(), "JOB_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetMsg(t.Context(), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	return events.JobStatus{ID: id, JobID: 7, Status: status, Time: ev.Time, Stored: raw.Time, Attempt: attempt, HasAttempt: true}
}

// TestClaimDecidedBeforeTheRebuildDecidesAgain is the model checker's P2 on
// a real server. Replica A cleaned run 1 and flushed for the restart of
// attempt 2; the backend created run 2's stream, unstamped. The bucket is
// lost; an outbox publishes REVOKED of attempt 1 again. A handles the copy:
// the new bucket has no record, so it decides to clean (the copy's arrival,
// after run 2's stream was created, is the fence) and claims by creating
// the record; it is slowed there. The rebuild then rewrites job 7's record
// with the event stream's order (the restart of attempt 2 is newest),
// keeping A's lease, and marks the bucket rebuilt; the quarantine ends. A
// goes on: without the check that its claim came after the rebuild, its
// gate admits the bucket and it deletes run 2's stream on a decision the
// rebuilt record would have judged stale. Released before the quarantine
// ends instead, A's gate refuses the claim, which gives the record back:
// putting back the empty record it started from would erase the rebuild's
// order, and the copy, handled again after the quarantine, would delete
// run 2's stream.
func TestClaimDecidedBeforeTheRebuildDecidesAgain(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name            string
		afterQuarantine bool
	}{{"released after the quarantine: decides again", true}, {"released within the quarantine: refused, keeps the rebuilt record", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			claimAcrossRebuild(t, tc.afterQuarantine)
		})
	}
}

func claimAcrossRebuild(t *testing.T, afterQuarantine bool) {
	t.Helper()
	e := setup(t)
	ensureEventStream(t, e.js)
	const bucket = "race_jobs"
	store, err := queue.OpenStore(t.Context(), e.js, queue.StoreConfig{Bucket: bucket, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	records := &holdingRecords{Store: store, held: make(chan struct{}), release: make(chan struct{})}
	cfg := handlers.DefaultConfig("A")
	cfg.Lease, cfg.Quarantine = 4*time.Second, 2*time.Second
	decoder := events.NewDecoder("job.status.", 1<<16, func(s events.Status) bool {
		return s == events.StatusRestartRequested || s == events.StatusRevoked
	})
	var rb *handlers.Rebuilder
	a := handlers.New(queue.NewJanitor(e.js, e.names), records, &answers{}, cfg,
		handlers.WithRebuild(events.NewReplayer(e.js, "JOB_EVENTS", "queue-janitor", decoder), store, zerolog.New(zerolog.NewTestWriter(t)), &rb))
	handle := func(ev events.JobStatus) events.Outcome { return handleWhenReady(t, a, rb, ev) }

	e.provision(7, 5, nil) // run 1, unstamped
	time.Sleep(cfg.Quarantine)
	revoked := storedEvent(t, e, "revoked-1", events.StatusRevoked, 1)
	if out := handle(revoked); out.Result != events.OutcomeRemoved {
		t.Fatalf("REVOKED of run 1: %s; want removed", out.Result)
	}
	if out := handle(storedEvent(t, e, "restart-2", events.StatusRestartRequested, 2)); out.Result != events.OutcomeNothing {
		t.Fatalf("the restart of attempt 2: %s; want nothing_to_remove", out.Result)
	}
	e.provision(7, 9, nil) // run 2, unstamped, after `flushed`

	if err := e.js.DeleteKeyValue(t.Context(), bucket); err != nil {
		t.Fatal(err)
	}
	copyOf := storedEvent(t, e, "revoked-1", events.StatusRevoked, 1) // the outbox publishes it again
	records.armed.Store(true)
	done := make(chan events.Outcome, 1)
	go func() { done <- handle(copyOf) }()
	select {
	case <-records.held: // A's claim is in the new bucket, decided on no record
	case <-time.After(time.Minute):
		t.Fatal("A did not claim job 7 in the new bucket within a minute")
	}
	if err := rb.Ensure(t.Context()); err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	rec, _, err := store.Get(t.Context(), 7)
	if err != nil {
		t.Fatal(err)
	}
	if rec.EventID != "restart-2" || rec.Lease == nil {
		t.Fatalf("job 7's record after the rebuild: event %q, lease %v; want restart-2's order with A's lease kept", rec.EventID, rec.Lease)
	}
	inc, err := store.Incarnation(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if afterQuarantine {
		time.Sleep(cfg.Quarantine - inc.Age() + 100*time.Millisecond) // the quarantine ends; A's authority still runs
	} else if inc.Age() >= cfg.Quarantine {
		t.Skipf("the rebuild outlasted the quarantine (%s): nothing to refuse", inc.Age())
	}
	close(records.release)

	out := <-done
	t.Logf("A's claim on the copy of REVOKED 1: decision %s, result %s", out.Decision, out.Result)
	if got := e.msgs("job_7"); got != 9 {
		t.Fatalf("run 2's stream holds %d messages (-1: gone); want its 9 tasks", got)
	}
	if out.Decision != events.DecisionStale {
		t.Errorf("the copy of REVOKED 1: decision %s; want stale (the rebuilt record's newest event is the restart of attempt 2)", out.Decision)
	}
}

// handleWhenReady handles ev as the intake would, waiting out (and helping
// along, with the rebuild) the new bucket's quarantine and rebuild.
func handleWhenReady(t *testing.T, a *handlers.Handler, rb *handlers.Rebuilder, ev events.JobStatus) events.Outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for {
		out, err := a.Handle(ctx, ev)
		var nr *handlers.NotReadyError
		switch {
		case errors.As(err, &nr):
			if errors.Is(rb.Ensure(ctx), context.DeadlineExceeded) {
				t.Fatalf("%s: still not ready after a minute: %v", ev.ID, err)
			}
			time.Sleep(nr.RetryAfter)
			continue
		case err != nil:
			t.Fatalf("%s: %v", ev.ID, err)
		}
		return out
	}
}
