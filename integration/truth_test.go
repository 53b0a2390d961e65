package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
)

// Every answer tells the truth (issue 27), on a real server: an effect done
// by an earlier attempt or another replica is reported as such, with what it
// removed, and the reconciler never answers for an effect already done.

// truthWorld is a handler (or two) over a real server and bucket.
type truthWorld struct {
	*env
	at      arrival
	store   *queue.Store
	answers *answers
}

func newTruthWorld(t *testing.T) *truthWorld {
	t.Helper()
	e := setup(t)
	store, err := queue.OpenStore(t.Context(), e.js, queue.StoreConfig{Bucket: "truth_jobs", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	return &truthWorld{env: e, at: newArrival(t, e.js), store: store, answers: &answers{}}
}

func (w *truthWorld) handler(owner string, q handlers.Queue, recs handlers.Records, lease time.Duration, opts ...handlers.Option) *handlers.Handler {
	cfg := handlers.DefaultConfig(owner)
	cfg.Quarantine, cfg.Lease = 0, lease // the test's server started empty
	return handlers.New(q, recs, w.answers, cfg, opts...)
}

// removedThenLost is the real janitor whose first removal is done but whose
// reply is lost, so that the attempt fails: the delete landed and the
// authority ran out before the retry could tell.
type removedThenLost struct {
	*queue.Janitor
	after func() // what happens to the replica then (nil: it fails)
	n     atomic.Int32
}

func (q *removedThenLost) Execute(ctx context.Context, p queue.Plan, auth queue.Authority) (queue.Removal, error) {
	r, err := q.Janitor.Execute(ctx, p, auth)
	if q.n.Add(1) == 1 && err == nil && r.Removed() {
		if q.after != nil {
			q.after()
		}
		return queue.Removal{Stream: p.Stream, Deleted: []string{}},
			fmt.Errorf("delete stream %q: %w (last request: %w)", p.Stream, queue.ErrAuthorityExpired, context.DeadlineExceeded)
	}
	return r, err
}

// TestPartlyFailedFirstAttemptIsReportedRemoved (27.1): the first delivery
// deleted job 7's queue, then failed (its reply lost, its authority gone).
// The redelivery finds nothing, and must answer removed, with the 20
// messages, confirmed by the earlier attempt's record.
func TestPartlyFailedFirstAttemptIsReportedRemoved(t *testing.T) {
	t.Parallel()
	w := newTruthWorld(t)
	w.provision(7, 20, events.Attempt(1))
	h := w.handler("A", &removedThenLost{Janitor: queue.NewJanitor(w.js, w.names)}, w.store, handlers.DefaultLease)
	ev := w.at.event(t, "revoked-1", events.StatusRevoked, 1)
	if _, err := h.Handle(t.Context(), ev); err == nil {
		t.Fatal("the first attempt must fail")
	}
	if w.msgs("job_7") != -1 {
		t.Fatal("the first attempt did not delete the stream")
	}
	out, err := h.Handle(t.Context(), ev)
	if err != nil {
		t.Fatal(err)
	}
	got := w.answers.last(t)
	if out.Result != events.OutcomeRemoved || got.Confirmed != queue.ConfirmedEarlierAttempt || got.MessagesDiscarded != 20 ||
		!slices.Contains(got.Deleted, "stream job_7") {
		t.Fatalf("answer = outcome %q confirmed %q, %d messages, deleted %v; want removed by the earlier attempt, 20 messages",
			got.Outcome, got.Confirmed, got.MessagesDiscarded, got.Deleted)
	}
}

// TestFrozenReplicasDeletionIsReportedByTheOneThatTakesOver (27.2): replica
// A deletes job 7's queue and freezes before it records anything; B takes
// the job over once A's lease ends and must answer removed, with what A
// removed, not nothing_to_remove.
func TestFrozenReplicasDeletionIsReportedByTheOneThatTakesOver(t *testing.T) {
	t.Parallel()
	w := newTruthWorld(t)
	w.provision(7, 20, events.Attempt(1))
	const lease = 4 * time.Second
	thaw := make(chan struct{})
	frozen := make(chan struct{})
	qa := &removedThenLost{Janitor: queue.NewJanitor(w.js, w.names), after: func() { close(frozen); <-thaw }}
	a := w.handler("A", qa, w.store, lease, handlers.WithoutRenewal()) // frozen: nothing of A runs, its renewals neither
	storeB, err := queue.OpenStore(t.Context(), w.js, queue.StoreConfig{Bucket: "truth_jobs", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	b := w.handler("B", queue.NewJanitor(w.js, w.names), storeB, lease)
	ev := w.at.event(t, "revoked-1", events.StatusRevoked, 1)
	aDone := make(chan struct{})
	go func() { defer close(aDone); _, _ = a.Handle(context.Background(), ev) }()
	defer func() { close(thaw); <-aDone }()
	<-frozen

	deadline := time.Now().Add(4 * lease)
	for {
		out, err := b.Handle(t.Context(), ev)
		if err == nil {
			if out.Result != events.OutcomeRemoved {
				t.Fatalf("B's outcome = %q; want removed (by A)", out.Result)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("B could not take over: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	got := w.answers.last(t)
	if got.Confirmed != queue.ConfirmedEarlierAttempt || got.MessagesDiscarded != 20 || !slices.Contains(got.Deleted, "stream job_7") {
		t.Fatalf("B's answer: confirmed %q, %d messages, deleted %v; want A's removal: earlier_attempt, 20, stream job_7",
			got.Confirmed, got.MessagesDiscarded, got.Deleted)
	}
}

// lostLastReply is the real store whose finishing write (the one that
// records a finished effect) lands but whose reply is lost: the store's
// retry of the same write then conflicts with it, as on the wire.
type lostLastReply struct {
	*queue.Store
	once atomic.Bool
}

func (s *lostLastReply) Put(ctx context.Context, id queue.JobID, rec queue.Record, rev uint64) (uint64, error) {
	n, err := s.Store.Put(ctx, id, rec, rev)
	if err == nil && rec.Lease == nil && rec.Effect != nil && rec.Effect.Finished && s.once.CompareAndSwap(false, true) {
		return s.Store.Put(ctx, id, rec, rev) // the retry after the lost reply
	}
	return n, err
}

// TestLostReplyToTheLastRecordWrite (27.4): the claim's own last write
// landed; its reply was lost. The claim recognizes its write and answers
// removed with the counts, instead of "the claim's lease was taken over".
func TestLostReplyToTheLastRecordWrite(t *testing.T) {
	t.Parallel()
	w := newTruthWorld(t)
	w.provision(7, 11, events.Attempt(1))
	h := w.handler("A", queue.NewJanitor(w.js, w.names), &lostLastReply{Store: w.store}, handlers.DefaultLease)
	out, err := h.Handle(t.Context(), w.at.event(t, "revoked-1", events.StatusRevoked, 1))
	if err != nil || out.Result != events.OutcomeRemoved {
		t.Fatalf("Handle = %+v, %v; want removed", out, err)
	}
	if got := w.answers.last(t); got.MessagesDiscarded != 11 {
		t.Fatalf("answer: %d messages; want 11", got.MessagesDiscarded)
	}
}

// TestReconcilerNeverAnswersForAnEffectAlreadyDone (27.3): a pass judged
// job 7 (its record at some revision); the REVOKED event's cleanup removed
// the queue and answered before the pass acted. The sweep must neither act
// nor answer; nor does the reconciler answer when it finds nothing to
// remove.
func TestReconcilerNeverAnswersForAnEffectAlreadyDone(t *testing.T) {
	t.Parallel()
	w := newTruthWorld(t)
	w.provision(7, 5, events.Attempt(1))
	h := w.handler("A", queue.NewJanitor(w.js, w.names), w.store, handlers.DefaultLease)
	if _, err := h.Handle(t.Context(), w.at.event(t, "started-1", events.StatusStarted, 1)); err != nil {
		t.Fatal(err)
	}
	judged, rev, err := w.store.Get(t.Context(), 7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Handle(t.Context(), w.at.event(t, "revoked-1", events.StatusRevoked, 1)); err != nil {
		t.Fatal(err)
	}
	answered := len(w.answers.all)
	_, err = h.Sweep(t.Context(), handlers.SweepRequest{ID: 7, Judged: judged, JudgedRev: rev,
		Fence: queue.Fence{CreatedBefore: time.Now().Add(time.Hour)}, Trigger: handlers.TriggerReconciler})
	if err == nil {
		t.Fatal("the sweep acted on a record that moved on")
	}
	cur, curRev, err := w.store.Get(t.Context(), 7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Sweep(t.Context(), handlers.SweepRequest{ID: 7, Judged: cur, JudgedRev: curRev,
		Fence: queue.Fence{CreatedBefore: time.Now().Add(time.Hour)}, Trigger: handlers.TriggerReconciler}); err != nil {
		t.Fatal(err)
	}
	if n := len(w.answers.all); n != answered {
		t.Fatalf("%d answers after the sweeps; want %d (only the event's)", n, answered)
	}
}

// TestSlowServerDoesNotChurnTheConnection (27.5): the server answers deletes
// late (two to three times the per-request timeout) but everything else at
// once. A delete that got no reply is in doubt only until a later request on
// the same connection is answered, so the service must not close its
// connection, and nothing is redelivered. A partition still closes it (the
// partition tests). QJ_CHURN_JOBS sets the storm's size.
func TestSlowServerDoesNotChurnTheConnection(t *testing.T) {
	t.Parallel()
	e := setup(t)
	jobs := envInt(t, "QJ_CHURN_JOBS", 40)
	proxy := newTCPProxy(t, strings.TrimPrefix(e.url, "nats://"))
	proxy.slowRequests("$JS.API.STREAM.DELETE.job_", 1200*time.Millisecond)
	for i := range jobs {
		e.provision(queue.JobID(i+1), 10, events.Attempt(1))
	}
	logs := &syncBuffer{}
	answers := subscribe(t, e.nc, "job.queue.cleaned.*")
	startServe(t, e.js, append(baseArgs(proxy.URL()), "--retry-attempt-timeout", "500ms", "--log-level", "info"),
		zerolog.MultiLevelWriter(logs, zerolog.NewTestWriter(t)))
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Go(func() {
			e.emit(events.StatusEvent{JobID: queue.JobID(i + 1), Status: events.StatusRevoked, Attempt: events.Attempt(1)})
		})
	}
	wg.Wait()
	e.awaitJobsGone(t, jobs, 2*time.Minute, "every job's stream gone")
	waitLog(t, logs, time.Minute, `"job_id":`+fmt.Sprint(jobs), `"message":"event handled"`, `"result":"`)
	closes := strings.Count(logs.String(), "closing the NATS connection")
	redelivered := strings.Count(logs.String(), `"delivery":2`) + strings.Count(logs.String(), `"delivery":3`)
	t.Logf("%d jobs through a server slow on deletes: %d connection closes, %d redeliveries", jobs, closes, redelivered)
	if closes != 0 {
		t.Errorf("%d connection closes for a server that only answered late", closes)
	}
	// Nothing killed: every answer tells the truth, once per job.
	eventually(t, time.Minute, "an answer for every job", func() bool { return answers.count() >= jobs })
	per := map[queue.JobID]int{}
	for _, m := range answers.all() {
		a := decodeEmitted(t, m).Data
		per[a.JobID]++
		if a.Outcome != events.OutcomeRemoved || a.MessagesDiscarded != 10 || !slices.Contains(a.Deleted, "stream "+e.names.StreamName(a.JobID)) {
			t.Errorf("job %d: answered %s, %d messages, deleted %v; want removed, 10, its stream", a.JobID, a.Outcome, a.MessagesDiscarded, a.Deleted)
		}
	}
	for id, n := range per {
		if n != 1 {
			t.Errorf("job %d answered %d times", id, n)
		}
	}
}
