package handlers

import (
	"errors"
	"testing"
	"time"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

type world struct {
	h       *Handler
	q       *fakeQueue
	records *fakeRecords
	emit    *fakeEmitter
	now     time.Time
}

func setup(t *testing.T) *world {
	t.Helper()
	w := &world{
		q:       &fakeQueue{removal: queue.Removal{Deleted: []string{"stream job_7"}, MessagesDiscarded: 5, StreamFound: true}},
		records: newFakeRecords(),
		emit:    &fakeEmitter{},
		now:     at(100),
	}
	cfg := DefaultConfig("me")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	w.records.clock = func() time.Time { return w.now }
	w.h = New(w.q, w.records, w.emit, cfg, WithClock(func() time.Time { return w.now }), WithoutRenewal())
	return w
}

func (w *world) handle(t *testing.T, e events.JobStatus) events.Outcome {
	t.Helper()
	out, err := w.h.Handle(t.Context(), e)
	if err != nil {
		t.Fatalf("Handle(%s %s): %v", e.ID, e.Status, err)
	}
	return out
}

func (w *world) record(t *testing.T) queue.Record {
	t.Helper()
	r, _, err := w.records.Get(t.Context(), 7)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTerminalCleansRecordsAndAnnounces(t *testing.T) {
	t.Parallel()
	w := setup(t)
	out := w.handle(t, ev("a", events.StatusRevoked, 1, 50))
	if out.Decision != events.DecisionCleanup || out.Result != events.OutcomeRemoved {
		t.Errorf("outcome = %+v", out)
	}
	fences := w.q.removes()
	if len(fences) != 1 || !fences[0].AttemptKnown || fences[0].MaxAttempt != 1 {
		t.Fatalf("Remove calls = %+v, want one with attempt 1", fences)
	}
	r := w.record(t)
	if r.State != queue.StateTerminal || !r.Done || r.Lease != nil || r.EventID != "a" || r.CleanedAt.IsZero() {
		t.Errorf("record after cleanup = %+v", r)
	}
	if c, f := w.emit.counts(); c != 1 || f != 0 {
		t.Errorf("emitted cleaned=%d flushed=%d, want 1/0", c, f)
	}
	if got := w.emit.cleaned[0]; got.JobID != 7 || got.MessagesDiscarded != 5 || got.CauseEventID != "a" || *got.Attempt != 1 {
		t.Errorf("cleaned = %+v", got)
	}
}

func TestDuplicateEventDoesNotActTwice(t *testing.T) {
	t.Parallel()
	w := setup(t)
	e := ev("a", events.StatusRevoked, 1, 50)
	w.handle(t, e)
	out := w.handle(t, e)
	if out.Result != events.OutcomeAlreadyDone {
		t.Errorf("second delivery result = %q, want %q", out.Result, events.OutcomeAlreadyDone)
	}
	if n := len(w.q.removes()); n != 1 {
		t.Errorf("Remove called %d times, want 1", n)
	}
	if c, _ := w.emit.counts(); c != 2 {
		t.Errorf("cleaned emitted %d times, want 2 (answered again)", c)
	}
}

func TestStaleEventNeverRemoves(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.handle(t, ev("r2", events.StatusRestartRequested, 2, 60))
	out := w.handle(t, ev("t1", events.StatusRevoked, 1, 50))
	if out.Decision != events.DecisionStale {
		t.Errorf("late terminal of attempt 1 after restart 2: decision %q, want stale", out.Decision)
	}
	if n := len(w.q.removes()); n != 1 {
		t.Errorf("Remove called %d times, want 1 (the flush only)", n)
	}
	if c, f := w.emit.counts(); c != 0 || f != 1 {
		t.Errorf("emitted cleaned=%d flushed=%d, want 0/1", c, f)
	}
	if r := w.record(t); r.EventID != "r2" || r.State != queue.StateFlushed {
		t.Errorf("stale event changed the record: %+v", r)
	}
}

func TestStaleRestartIsAnsweredStale(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.handle(t, ev("r3", events.StatusRestartRequested, 3, 60))
	out := w.handle(t, ev("r2", events.StatusRestartRequested, 2, 70))
	if out.Decision != events.DecisionStale {
		t.Errorf("decision = %q, want stale", out.Decision)
	}
	if n := len(w.q.removes()); n != 1 {
		t.Errorf("Remove called %d times, want 1", n)
	}
	if _, f := w.emit.counts(); f != 2 || w.emit.flushed[1].Outcome != events.OutcomeStale || w.emit.flushed[1].CauseEventID != "r2" {
		t.Errorf("the superseded request must be answered stale: %+v", w.emit.flushed)
	}
}

func TestDuplicateRestartForSameAttemptDoesNotFlushAgain(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.handle(t, ev("r1", events.StatusRestartRequested, 2, 60))
	out := w.handle(t, ev("r1-again", events.StatusRestartRequested, 2, 75))
	if out.Decision != events.DecisionFlush || out.Result != events.OutcomeAlreadyDone {
		t.Errorf("outcome = %+v", out)
	}
	fences := w.q.removes()
	if len(fences) != 1 || fences[0].MaxAttempt != 1 {
		t.Errorf("Remove calls = %+v, want one flush of attempts up to 1", fences)
	}
	if _, f := w.emit.counts(); f != 2 {
		t.Errorf("flushed emitted %d times, want 2 (the backend's second request is answered)", f)
	}
}

func TestRemoveFailureReleasesLeaseAndRetries(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.q.err = errors.New("nats: timeout")
	_, err := w.h.Handle(t.Context(), ev("a", events.StatusRevoked, 1, 50))
	if err == nil {
		t.Fatal("Handle succeeded although Remove failed")
	}
	if r := w.record(t); r.Done || r.Lease != nil {
		t.Errorf("after a failure the record must be undone and unleased: %+v", r)
	}
	if c, _ := w.emit.counts(); c != 0 {
		t.Errorf("cleaned emitted after a failure")
	}
	w.q.err = nil
	if out := w.handle(t, ev("a", events.StatusRevoked, 1, 50)); out.Result != events.OutcomeRemoved {
		t.Errorf("retry result = %q, want removed", out.Result)
	}
	if n := len(w.q.removes()); n != 2 {
		t.Errorf("Remove called %d times, want 2", n)
	}
}

func TestClaimConflictDecidesAgain(t *testing.T) {
	t.Parallel()
	w := setup(t)
	// Another replica records restart 2 between our read and our claim.
	w.records.beforePut = func() {
		other := claimRecord(kindRestart, ev("r2", events.StatusRestartRequested, 2, 60), queue.Record{}, queue.Lease{Owner: "other", Until: at(0)})
		other.Lease, other.Done = nil, true
		if _, err := w.records.put(7, other, 0); err != nil {
			t.Error(err)
		}
	}
	out := w.handle(t, ev("t1", events.StatusRevoked, 1, 50))
	if out.Decision != events.DecisionStale {
		t.Errorf("after losing the race to a newer restart: decision %q, want stale", out.Decision)
	}
	if n := len(w.q.removes()); n != 0 {
		t.Errorf("Remove called %d times, want 0", n)
	}
}

func TestBusyJobIsHandedBack(t *testing.T) {
	t.Parallel()
	w := setup(t)
	held := leased(rec("r2", events.StatusRestartRequested, 2, 60, false), "other", 1000)
	if _, err := w.records.put(7, held, 0); err != nil {
		t.Fatal(err)
	}
	_, err := w.h.Handle(t.Context(), ev("t2", events.StatusRevoked, 2, 70))
	var busy *BusyError
	if !errors.Is(err, ErrJobBusy) || !errors.As(err, &busy) {
		t.Fatalf("err = %v, want a BusyError", err)
	}
	// Written at server time 100 with a 10 s lease: whatever the holder's
	// Until says, it ends at 110.
	if busy.Holder != "other" || busy.RetryAfter != 10*time.Second {
		t.Errorf("busy = %+v; want held by other for 10s more (until its lease ends in server time)", busy)
	}
	if n := len(w.q.removes()); n != 0 {
		t.Errorf("Remove called while another replica held the lease")
	}
}

func TestNonAsyncJobHasNoQueue(t *testing.T) {
	t.Parallel()
	w := setup(t)
	e := ev("r", events.StatusRestartRequested, 2, 60)
	e.DispatchMode = "sync_api"
	out := w.handle(t, e)
	if out.Decision != events.DecisionIgnore || out.Result != "no_queue" {
		t.Errorf("outcome = %+v", out)
	}
	if len(w.q.removes()) != 0 {
		t.Error("Remove called for a job without a queue")
	}
	if _, f := w.emit.counts(); f != 1 || w.emit.flushed[0].Outcome != events.OutcomeNothing {
		t.Errorf("the waiting backend must still get flushed (nothing to remove)")
	}
}

func TestRunningStatusIsRecordedNotActedOn(t *testing.T) {
	t.Parallel()
	w := setup(t)
	out := w.handle(t, ev("s", events.StatusStarted, 1, 40))
	if out.Decision != events.DecisionIgnore || out.Result != "recorded" {
		t.Errorf("outcome = %+v", out)
	}
	if r := w.record(t); r.State != queue.StateRunning || r.EventID != "s" {
		t.Errorf("record = %+v", r)
	}
	// A terminal event of the same run that happened earlier is stale.
	if out := w.handle(t, ev("t", events.StatusRevoked, 1, 30)); out.Decision != events.DecisionStale {
		t.Errorf("decision = %q, want stale", out.Decision)
	}
	if len(w.q.removes()) != 0 {
		t.Error("Remove called")
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	good := DefaultConfig("me")
	cases := map[string]func(*Config){
		"no terminal statuses": func(c *Config) { c.Terminal = nil },
		"restart as terminal":  func(c *Config) { c.Terminal = []events.Status{events.StatusRestartRequested} },
		"short lease":          func(c *Config) { c.Lease = time.Second },
		"no owner":             func(c *Config) { c.Owner = "" },
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := DefaultConfig("me")
			mutate(&c)
			if err := c.Validate(); err == nil {
				t.Error("Validate accepted it")
			}
		})
	}
}

// TestClaimsOfOneProcessExcludeEachOther: the reconciler's sweep and the
// event intake of one process share a Handler, hence an owner. While the
// sweep is inside its removal, a restart request for the same job must wait
// for it: a claim is a token, not a replica.
func TestClaimsOfOneProcessExcludeEachOther(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.handle(t, ev("t1", events.StatusRevoked, 1, 50))
	judged, judgedRev, err := w.records.Get(t.Context(), 7)
	if err != nil {
		t.Fatal(err)
	}
	var inner error
	w.q.during = func() {
		w.q.during = nil
		_, inner = w.h.Handle(t.Context(), ev("r2", events.StatusRestartRequested, 2, 60))
	}
	if _, err := w.h.Sweep(t.Context(), SweepRequest{ID: 7, Judged: judged, JudgedRev: judgedRev,
		Fence: queue.Fence{CreatedBefore: at(60)}, Trigger: TriggerReconciler}); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if !errors.Is(inner, ErrJobBusy) {
		t.Fatalf("restart during the same process's sweep: err = %v, want ErrJobBusy", inner)
	}
	if n := len(w.q.removes()); n != 2 {
		t.Fatalf("Remove called %d times, want 2 (the event's, the sweep's): the restart must not act during the sweep", n)
	}
	if _, f := w.emit.counts(); f != 0 {
		t.Fatal("flushed answered while the sweep held the job")
	}
	// Once the sweep is done, the restart acts.
	if out := w.handle(t, ev("r2", events.StatusRestartRequested, 2, 60)); out.Decision != events.DecisionFlush {
		t.Errorf("restart after the sweep: %+v", out)
	}
}

// TestLeaseJudgedInServerTimeNotByTheReplicasClock: a replica whose clock
// runs an hour ahead still sees another's running lease as running.
func TestLeaseJudgedInServerTimeNotByTheReplicasClock(t *testing.T) {
	t.Parallel()
	w := setup(t)
	ahead := New(w.q, w.records, w.emit, DefaultConfig("ahead"),
		WithClock(func() time.Time { return w.now.Add(time.Hour) }), WithoutRenewal())
	var inner error
	w.q.during = func() {
		w.q.during = nil
		_, inner = ahead.Handle(t.Context(), ev("t1", events.StatusRevoked, 1, 50))
	}
	w.handle(t, ev("t1", events.StatusRevoked, 1, 50))
	var busy *BusyError
	if !errors.As(inner, &busy) || busy.Holder != "me" {
		t.Fatalf("a replica with its clock an hour ahead: err = %v, want busy (held by me)", inner)
	}
	if n := len(w.q.removes()); n != 1 {
		t.Errorf("Remove called %d times, want 1", n)
	}
}

// TestRenewalKeepsAndLosesTheClaim: renewing moves the authority's deadline
// on; once another claim takes the record over, renewing fails, the
// effect is not recorded by this claim and nothing is announced.
func TestRenewalKeepsAndLosesTheClaim(t *testing.T) {
	t.Parallel()
	w := setup(t)
	var c ClaimHandle
	h := New(w.q, w.records, w.emit, DefaultConfig("me"), WithClock(func() time.Time { return w.now }),
		WithoutRenewal(), WithClaimHook(func(ch ClaimHandle) { c = ch }))
	var err error
	w.q.during = func() {
		first := c.Deadline()
		if want := w.now.Add(DefaultLease - DefaultLease/4); !first.Equal(want) {
			t.Errorf("deadline = %s, want %s (claim sent + lease - margin)", first, want)
		}
		w.now = w.now.Add(5 * time.Second)
		if !c.Renew(t.Context()) || !c.Deadline().Equal(first.Add(5*time.Second)) {
			t.Errorf("renewal: deadline %s, want %s", c.Deadline(), first.Add(5*time.Second))
		}
		// Another claim takes over (as after an expiry).
		rec, rev, gerr := w.records.Get(t.Context(), 7)
		if gerr != nil {
			t.Fatal(gerr)
		}
		rec.Lease = &queue.Lease{Owner: "other", Token: "other", TTL: DefaultLease}
		if _, perr := w.records.Put(t.Context(), 7, rec, rev); perr != nil {
			t.Fatal(perr)
		}
		if c.Renew(t.Context()) {
			t.Error("renewal succeeded after another claim took the job")
		}
	}
	_, err = h.Handle(t.Context(), ev("t1", events.StatusRevoked, 1, 50))
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("err = %v, want ErrLeaseLost", err)
	}
	if c, f := w.emit.counts(); c+f != 0 {
		t.Error("an effect whose claim was lost was announced")
	}
	if r := w.record(t); r.Done || r.Lease == nil || r.Lease.Owner != "other" {
		t.Errorf("record = %+v; the other claim's lease must stand and the effect not be marked done", r)
	}
}

// TestRecordIsWrittenBeforeTheAnswer: when recording the effect fails, no
// answer goes out; the retried event is then answered.
func TestRecordIsWrittenBeforeTheAnswer(t *testing.T) {
	t.Parallel()
	w := setup(t)
	failing := w.failRecordsDuringEffect()
	if _, err := w.h.Handle(t.Context(), ev("r2", events.StatusRestartRequested, 2, 60)); err == nil {
		t.Fatal("Handle succeeded although the record could not be written")
	}
	if _, f := w.emit.counts(); f != 0 {
		t.Fatal("flushed was answered before the effect was recorded")
	}
	// The lease could not be given back either: the retry waits it out.
	*failing = false
	w.now = w.now.Add(DefaultLease)
	if out := w.handle(t, ev("r2", events.StatusRestartRequested, 2, 60)); out.Decision != events.DecisionFlush {
		t.Errorf("retry: %+v", out)
	}
	if _, f := w.emit.counts(); f != 1 {
		t.Errorf("flushed answered %d times after the retry, want 1", f)
	}
}

// TestCleanedGoesOutBesideTheRecord: a terminal job's answer, which nobody
// waits on, is sent with the record write rather than after its reply; when
// that write fails, the event is handed back and its retry answers again,
// with what the first attempt removed.
func TestCleanedGoesOutBesideTheRecord(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.q.removal = queue.Removal{StreamFound: true, Deleted: []string{"stream job_7"}, MessagesDiscarded: 5}
	failing := w.failRecordsDuringEffect()
	if _, err := w.h.Handle(t.Context(), ev("t1", events.StatusRevoked, 1, 50)); err == nil {
		t.Fatal("Handle succeeded although the record could not be written")
	}
	if c, _ := w.emit.counts(); c != 1 {
		t.Fatalf("cleaned answered %d times before the record write's reply, want 1 (sent beside it)", c)
	}
	*failing = false
	w.now = w.now.Add(DefaultLease)
	w.q.removal = queue.Removal{Deleted: []string{}}
	w.q.gone = true
	if out := w.handle(t, ev("t1", events.StatusRevoked, 1, 50)); out.Decision != events.DecisionCleanup {
		t.Fatalf("retry: %+v", out)
	}
	w.emit.mu.Lock()
	defer w.emit.mu.Unlock()
	if len(w.emit.cleaned) != 2 {
		t.Fatalf("cleaned answered %d times after the retry, want 2", len(w.emit.cleaned))
	}
	if again := w.emit.cleaned[1]; again.Outcome != events.OutcomeRemoved || again.MessagesDiscarded != 5 {
		t.Errorf("the retry's answer: outcome %q, %d messages; want removed, 5 (the first attempt's, from its recorded intent)",
			again.Outcome, again.MessagesDiscarded)
	}
	if r := w.record(t); !r.Done {
		t.Errorf("record = %+v; the retry must record the effect done", r)
	}
}

// TestUnconfirmedCleanedHandsTheEventBack: a cleaned answer that the server
// did not confirm (its flush failed: the connection broke) hands the event
// back although the effect is recorded, so that it is answered again
// (already_done) rather than acknowledged with its answer perhaps lost.
func TestUnconfirmedCleanedHandsTheEventBack(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.q.removal = queue.Removal{StreamFound: true, Deleted: []string{"stream job_7"}, MessagesDiscarded: 5}
	w.emit.failCleaned = errors.New("confirm cleaned: nats: connection closed")
	if _, err := w.h.Handle(t.Context(), ev("t1", events.StatusRevoked, 1, 50)); err == nil {
		t.Fatal("Handle succeeded although the answer was not confirmed")
	}
	if r := w.record(t); !r.Done {
		t.Fatalf("record = %+v; the effect must be recorded done beside the answer", r)
	}
	w.emit.mu.Lock()
	w.emit.failCleaned = nil
	w.emit.mu.Unlock()
	if out := w.handle(t, ev("t1", events.StatusRevoked, 1, 50)); out.Result != events.OutcomeAlreadyDone {
		t.Fatalf("the event handed back: %+v; want already_done", out)
	}
	w.emit.mu.Lock()
	defer w.emit.mu.Unlock()
	if len(w.emit.cleaned) != 2 || w.emit.cleaned[1].Outcome != events.OutcomeAlreadyDone || w.emit.cleaned[1].MessagesDiscarded != 5 {
		t.Errorf("answers: %+v; want the effect's, then already_done with its counts", w.emit.cleaned)
	}
}

// TestKeptLaterRunOnlyForALaterRun: an answer says kept_later_run only when
// a fence kept a later run's resource; a resource kept for being in use is
// "kept".
func TestKeptLaterRunOnlyForALaterRun(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		later bool
		want  string
	}{{true, events.OutcomeKeptLaterRun}, {false, events.OutcomeKept}} {
		w := setup(t)
		w.q.removal = queue.Removal{StreamFound: true, Deleted: []string{}, Kept: []string{"stream job_7: why"}, KeptLaterRun: tc.later}
		if out := w.handle(t, ev("a", events.StatusRevoked, 1, 50)); out.Result != tc.want {
			t.Errorf("later run %v: result %q, want %q", tc.later, out.Result, tc.want)
		}
	}
}
