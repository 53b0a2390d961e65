package handlers

import (
	"testing"
	"time"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

func ev(id string, status events.Status, attempt int64, sec int) events.JobStatus {
	e := events.JobStatus{ID: id, JobID: 7, Status: status, Time: at(sec), Stored: at(sec)}
	if attempt >= 0 {
		e.Attempt, e.HasAttempt = attempt, true
	}
	return e
}

func rec(id string, status events.Status, attempt int64, sec int, done bool) queue.Record {
	r := queue.Record{EventID: id, Status: string(status), Time: at(sec), Stored: at(sec), Done: done, State: queue.StateRunning}
	switch status {
	case events.StatusRestartRequested:
		r.State = queue.StateFlushed
	case events.StatusRevoked, events.StatusFailure, events.StatusCancelled:
		r.State = queue.StateTerminal
	}
	if attempt >= 0 {
		r.Attempt = &attempt
	}
	return r
}

// leased gives r a lease of owner's that ends at untilSec in server time.
func leased(r queue.Record, owner string, untilSec int) queue.Record {
	r.Lease = &queue.Lease{Owner: owner, Token: owner + "-token", TTL: 10 * time.Second}
	r.At = at(untilSec - 10)
	return r
}

// restarted records that restart request id (of attempt, -1: none) was
// acted on before r.
func restarted(r queue.Record, id string, attempt int64) queue.Record {
	r.RestartID = id
	if attempt >= 0 {
		r.RestartAttempt = &attempt
	}
	return r
}

// flushing is r, a version 3 record, whose last restart request acted on is
// id (of attempt, -1: none), first stored at storedSec, its flush done or
// not.
func flushing(r queue.Record, id string, attempt int64, storedSec int, done bool) queue.Record {
	r = restarted(r, id, attempt)
	r.V, r.RestartStored, r.RestartDone = 3, at(storedSec), done
	if r.Status == string(events.StatusRestartRequested) {
		r.State = queue.StateFlushed
	} else if r.State == "" {
		r.State = queue.StateRunning
	}
	return r
}

// running marks r's newest event a non-acting status.
func running(r queue.Record) queue.Record {
	r.State = queue.StateRunning
	return r
}

// seen gives r the ids of events already taken into account.
func seen(r queue.Record, ids ...string) queue.Record {
	r.Seen = ids
	return r
}

// skewed is ev as produced by a clock off by offSec: its own time moves,
// its arrival at the server does not.
func skewed(e events.JobStatus, offSec int) events.JobStatus {
	e.Time = e.Time.Add(time.Duration(offSec) * time.Second)
	return e
}

func TestDecide(t *testing.T) {
	t.Parallel()
	const me = "me"
	revoked, restart, started := events.StatusRevoked, events.StatusRestartRequested, events.StatusStarted
	cases := []struct {
		name   string
		kind   kind
		ev     events.JobStatus
		rec    queue.Record
		exists bool
		want   verdict
	}{
		{"first terminal acts", kindTerminal, ev("a", revoked, 1, 10), queue.Record{}, false, verdictAct},
		{"first restart acts", kindRestart, ev("a", restart, 2, 10), queue.Record{}, false, verdictAct},
		{"first running status is recorded", kindOther, ev("a", started, 1, 10), queue.Record{}, false, verdictRecord},
		{"untimed running status is ignored", kindOther, events.JobStatus{ID: "a", Status: started}, queue.Record{}, false, verdictIgnore},

		{"terminal of an older attempt is stale", kindTerminal, ev("a", revoked, 1, 50), rec("b", restart, 2, 20, true), true, verdictStale},
		{"terminal older in time, no attempts, is stale", kindTerminal, ev("a", revoked, -1, 5), rec("b", restart, -1, 20, true), true, verdictStale},
		{"same attempt, earlier time is stale", kindTerminal, ev("a", revoked, 2, 5), rec("b", started, 2, 20, true), true, verdictStale},
		{"terminal redelivered after done replays", kindTerminal, ev("a", revoked, 1, 10), rec("a", revoked, 1, 10, true), true, verdictReplay},
		{"terminal redelivered before done acts again", kindTerminal, ev("a", revoked, 1, 10), rec("a", revoked, 1, 10, false), true, verdictAct},
		{"second terminal same instant acts", kindTerminal, ev("b", events.StatusFailure, 1, 10), rec("a", revoked, 1, 10, true), true, verdictAct},
		{"terminal after running of same attempt acts", kindTerminal, ev("a", revoked, 1, 30), rec("b", started, 1, 20, true), true, verdictAct},
		{"terminal while another replica holds the lease waits", kindTerminal, ev("a", revoked, 2, 30), leased(rec("b", restart, 2, 20, false), "other", 100), true, verdictWait},
		{"expired lease of another replica is taken over", kindTerminal, ev("a", revoked, 2, 30), leased(rec("b", restart, 2, 20, false), "other", 29), true, verdictAct},
		{"another claim of this same replica blocks too", kindTerminal, ev("a", revoked, 2, 30), leased(rec("b", restart, 2, 20, false), me, 100), true, verdictWait},
		{"stale terminal is skipped even while leased", kindTerminal, ev("a", revoked, 1, 30), leased(rec("b", restart, 2, 20, false), "other", 100), true, verdictStale},

		{"restart of a newer attempt acts", kindRestart, ev("a", restart, 3, 30), rec("b", revoked, 2, 20, true), true, verdictAct},
		{"restart for an older attempt is stale", kindRestart, ev("a", restart, 2, 40), rec("b", restart, 3, 30, true), true, verdictStale},
		{"duplicate restart for the same attempt replays", kindRestart, ev("c", restart, 3, 99), rec("b", restart, 3, 30, true), true, verdictReplay},
		{"redelivered restart replays", kindRestart, ev("b", restart, 3, 30), rec("b", restart, 3, 30, true), true, verdictReplay},
		{"same-attempt restart while first still leased waits", kindRestart, ev("c", restart, 3, 31), leased(rec("b", restart, 3, 30, false), "other", 100), true, verdictWait},
		{"same-attempt restart after the first crashed resumes", kindRestart, ev("c", restart, 3, 31), leased(rec("b", restart, 3, 30, false), "other", 5), true, verdictAct},
		{"the same restart published again without attempts replays", kindRestart, ev("b", restart, -1, 35), rec("b", restart, -1, 30, true), true, verdictReplay},
		{"newer restart without attempts acts", kindRestart, ev("c", restart, -1, 40), rec("b", restart, -1, 30, true), true, verdictAct},
		{"restart older than the terminal of its own run is stale", kindRestart, ev("a", restart, 2, 10), rec("b", revoked, 2, 20, true), true, verdictStale},
		{"restart newer than a running status of the same run acts", kindRestart, ev("a", restart, 2, 30), rec("b", started, 2, 20, true), true, verdictAct},

		{"newer running status is recorded", kindOther, ev("a", started, 3, 40), rec("b", restart, 3, 30, true), true, verdictRecord},
		{"older running status is ignored", kindOther, ev("a", started, 2, 40), rec("b", restart, 3, 30, true), true, verdictIgnore},
		{"running status during a lease is still recorded", kindOther, ev("a", started, 3, 40), leased(rec("b", restart, 3, 30, false), "other", 100), true, verdictRecord},

		// A restart that already began its run, published again after the
		// run moved on (found by the history test): never a new flush.
		{"the restart acted on, published again after success, replays", kindRestart, ev("r4", restart, -1, 40), restarted(rec("s", events.StatusSuccess, -1, 35, true), "r4", -1), true, verdictReplay},
		{"with attempts, a repeat of the attempt's restart after success replays", kindRestart, ev("r4", restart, 4, 40), restarted(rec("s", events.StatusSuccess, 4, 35, true), "r4", 4), true, verdictReplay},
		{"another request for an attempt already restarted replays", kindRestart, ev("r4b", restart, 4, 40), restarted(rec("s", started, 4, 35, true), "r4", 4), true, verdictReplay},
		{"a restart for the next attempt still acts", kindRestart, ev("r5", restart, 5, 40), restarted(rec("s", started, 4, 35, true), "r4", 4), true, verdictAct},

		// A restart whose flush never finished (its claim failed or died),
		// after which the run it starts moved the record on (a `pending`
		// recorded between the request and its answer): redelivered, it is
		// flushed, never answered as done.
		{"restart whose flush failed, redelivered after its run's pending, resumes", kindRestart, ev("r2", restart, 2, 20),
			flushing(rec("p", events.StatusPending, 2, 25, true), "r2", 2, 20, false), true, verdictAct},
		{"the same without attempts resumes", kindRestart, ev("r2", restart, -1, 20),
			flushing(rec("p", events.StatusPending, -1, 25, true), "r2", -1, 20, false), true, verdictAct},
		{"a second request for that attempt resumes too", kindRestart, ev("r2b", restart, 2, 40),
			flushing(rec("p", events.StatusPending, 2, 25, true), "r2", 2, 20, false), true, verdictAct},
		{"restart whose flush finished, redelivered after pending, replays", kindRestart, ev("r2", restart, 2, 20),
			flushing(rec("p", events.StatusPending, 2, 25, true), "r2", 2, 20, true), true, verdictReplay},
		{"restart whose flush failed, superseded by its run's end, is stale", kindRestart, ev("r2", restart, 2, 20),
			flushing(queue.Record{EventID: "x", Status: "revoked", Time: at(30), Stored: at(30), State: queue.StateTerminal, Done: true, Attempt: ptr(int64(2))}, "r2", 2, 20, false), true, verdictStale},
		// A `pending` of the new run recorded before its restart request was
		// handled does not make the request stale (found by the model
		// checker): the backend still waits for its answer.
		{"restart handled after its run's pending acts", kindRestart, ev("r2", restart, 2, 20),
			running(rec("p2", events.StatusPending, 2, 25, true)), true, verdictAct},
		{"the same without attempts acts", kindRestart, ev("r2", restart, -1, 20),
			running(rec("p", events.StatusPending, -1, 25, true)), true, verdictAct},
		{"restart older than a later attempt's status is stale", kindRestart, ev("r2", restart, 2, 20),
			running(rec("p3", events.StatusPending, 3, 25, true)), true, verdictStale},
		// Of one run, its restart request comes first, whenever a copy of it
		// arrives (found by the history test after an event stream was lost
		// and rebuilt without the original).
		{"the run's end after a re-sent copy of its restart request acts", kindTerminal, ev("c4", events.StatusCancelled, 4, 20),
			rec("r4", restart, 4, 30, true), true, verdictAct},
		{"a re-sent restart request after its run's end is not newer", kindRestart, ev("r4x", restart, 4, 40),
			rec("c4", events.StatusCancelled, 4, 30, true), true, verdictStale},
		// A copy of an event published again after newer ones (an outbox
		// that re-sends) is not newer than they are (found by the model
		// checker, without attempts).
		{"a copy of an older terminal published again is stale", kindTerminal, ev("t1", revoked, -1, 40),
			seen(rec("r2", restart, -1, 30, true), "t1", "r2"), true, verdictStale},
		{"a copy of an older running status is ignored", kindOther, ev("s1", started, -1, 40),
			seen(rec("r2", restart, -1, 30, true), "s1", "r2"), true, verdictIgnore},
		{"resumed restart whose lease another claim holds waits", kindRestart, ev("r2", restart, 2, 20),
			leased(flushing(rec("p", events.StatusPending, 2, 25, true), "r2", 2, 20, false), "other", 100), true, verdictWait},

		// Without attempts, order is arrival at the server; producer clocks
		// ten minutes off either way change nothing.
		{"late terminal from a clock ahead is still stale", kindTerminal, skewed(ev("a", revoked, -1, 5), 600), rec("b", restart, -1, 20, true), true, verdictStale},
		{"restart from a clock behind a future-dated terminal acts", kindRestart, skewed(ev("a", restart, -1, 30), -600), rec("b", revoked, -1, 20, true), true, verdictAct},
		{"terminal from a clock behind still acts", kindTerminal, skewed(ev("a", revoked, -1, 30), -600), rec("b", started, -1, 20, true), true, verdictAct},
		{"version 1 record without server time: producer times order", kindTerminal, ev("a", revoked, -1, 5),
			queue.Record{EventID: "b", Status: "restart_requested", Time: at(20), Done: true}, true, verdictStale},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := decide(tc.kind, tc.ev, tc.rec, tc.exists, tc.rec.LeaseLive(at(30))); got != tc.want {
				t.Errorf("decide = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestFenceFor(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		kind        kind
		ev          events.JobStatus
		rec         queue.Record
		wantBefore  time.Time
		wantKnown   bool
		wantMaxTrue int64
	}{
		{"terminal removes its own run", kindTerminal, ev("a", events.StatusRevoked, 4, 30), queue.Record{}, at(30), true, 4},
		{"restart removes earlier runs only", kindRestart, ev("a", events.StatusRestartRequested, 4, 30), queue.Record{}, at(30), true, 3},
		{"without attempt only time fences", kindTerminal, ev("a", events.StatusRevoked, -1, 30), queue.Record{}, at(30), false, 0},
		{"the producer's clock plays no part", kindTerminal, skewed(ev("a", events.StatusRevoked, -1, 30), 600), queue.Record{}, at(30), false, 0},
		{"resumed restart keeps the first request's time", kindRestart, ev("c", events.StatusRestartRequested, 4, 50),
			rec("b", events.StatusRestartRequested, 4, 30, false), at(30), true, 3},
		{"redelivered restart keeps its first arrival", kindRestart, ev("b", events.StatusRestartRequested, -1, 50),
			rec("b", events.StatusRestartRequested, -1, 30, true), at(30), false, 0},
		{"restart resumed after its run's pending keeps its first arrival", kindRestart, ev("r2", events.StatusRestartRequested, 2, 50),
			flushing(rec("p", events.StatusPending, 2, 40, true), "r2", 2, 30, false), at(30), true, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := fenceFor(tc.kind, tc.ev, tc.rec)
			if !f.CreatedBefore.Equal(tc.wantBefore) || f.AttemptKnown != tc.wantKnown || f.MaxAttempt != tc.wantMaxTrue || f.Cut == "" {
				t.Errorf("fence = %+v, want before %s known %v max %d", f, tc.wantBefore, tc.wantKnown, tc.wantMaxTrue)
			}
		})
	}
}

func TestClaim(t *testing.T) {
	t.Parallel()
	lease := queue.Lease{Owner: "me", Until: at(100)}
	prev := rec("b", events.StatusRestartRequested, 3, 30, false)
	prev.CleanedAt = at(1)

	got := claimRecord(kindTerminal, ev("a", events.StatusRevoked, 3, 40), prev, lease)
	if got.EventID != "a" || got.State != queue.StateTerminal || got.Done || *got.Attempt != 3 || got.Lease.Owner != "me" || !got.CleanedAt.Equal(at(1)) {
		t.Errorf("terminal claim = %+v", got)
	}
	resumed := claimRecord(kindRestart, ev("c", events.StatusRestartRequested, 3, 50), prev, lease)
	if resumed.EventID != "b" || !resumed.Time.Equal(at(30)) || resumed.Lease == nil {
		t.Errorf("resumed restart must keep the first request's identity, got %+v", resumed)
	}
	afterPending := claimRecord(kindRestart, ev("r4", events.StatusRestartRequested, 4, 40), running(rec("p4", events.StatusPending, 4, 45, true)), lease)
	if afterPending.EventID != "p4" || afterPending.RestartID != "r4" || !afterPending.RestartStored.Equal(at(40)) || afterPending.RestartDone {
		t.Errorf("a restart handled after its run's pending keeps pending the newest and records itself: %+v", afterPending)
	}
	noAttempt := claimRecord(kindRestart, ev("d", events.StatusRestartRequested, -1, 60), rec("b", events.StatusRevoked, 3, 30, true), lease)
	if noAttempt.Attempt == nil || *noAttempt.Attempt != 3 || noAttempt.State != queue.StateFlushed {
		t.Errorf("a claim without attempt keeps the known attempt: %+v", noAttempt)
	}
}

func ptr[T any](v T) *T { return &v }

// TestLeaseCarriedOverKeepsItsEnd: a status recorded while another claim
// holds the lease writes a new revision, but the lease still ends when its
// holder's last write says (found by the model checker: each `pending`
// extended a crashed holder's lease).
func TestLeaseCarriedOverKeepsItsEnd(t *testing.T) {
	t.Parallel()
	r := leased(rec("r2", events.StatusRestartRequested, 2, 20, false), "A", 30) // ends at 30
	next := recordRunning(ev("p2", events.StatusPending, 2, 25), r)
	next.At = at(25) // the revision that wrote it
	if got := next.LeaseEnds(); !got.Equal(at(30)) {
		t.Fatalf("lease ends %s after the pending was recorded; want %s", got, at(30))
	}
	if next.LeaseLive(at(31)) {
		t.Fatal("the lease outlived its holder's last write by a pending")
	}
}

// TestPurgeFirstWhenTheQueueWasRemovedRecently: a removal empties the stream
// first only when the job's queue was removed within recentCleanup (a name
// deleted twice in a short while can bring the first stream's messages back).
func TestPurgeFirstWhenTheQueueWasRemovedRecently(t *testing.T) {
	t.Parallel()
	fresh := rec("a", events.StatusStarted, 1, 10, true)
	recent := fresh
	recent.CleanedAt = at(0)
	old := fresh
	old.CleanedAt = at(0).Add(-time.Hour)
	for _, tc := range []struct {
		name string
		rec  queue.Record
		want bool
	}{{"never removed", fresh, false}, {"removed 20 s before", recent, true}, {"removed an hour before", old, false}} {
		if got := fenceFor(kindTerminal, ev("t", events.StatusRevoked, 1, 20), tc.rec).PurgeFirst; got != tc.want {
			t.Errorf("%s: PurgeFirst = %v, want %v", tc.name, got, tc.want)
		}
	}
}
