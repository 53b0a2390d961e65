package handlers

import (
	"slices"
	"time"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// kind is what an event asks of the queue.
type kind int

const (
	kindOther    kind = iota // any other status: only recorded
	kindTerminal             // the job ended: clean its queue
	kindRestart              // a new run will publish: flush leftovers first
)

// verdict is what to do with an event given the job's record.
type verdict int

const (
	verdictAct    verdict = iota // claim the job and act on its queue
	verdictStale                 // older than what the record has seen: skip
	verdictReplay                // the effect is already done: emit again, no deletes
	verdictWait                  // another replica is acting on the job: wait
	verdictRecord                // a newer non-acting status: update the record only
	verdictIgnore                // nothing to do, nothing to record
)

func (v verdict) String() string {
	return [...]string{"act", "stale", "replay", "wait", "record", "ignore"}[v]
}

// compare orders an event against the newest event in the record: by
// attempt when both carry one and they differ (and of one attempt, its
// restart request first), else by when each reached the
// event stream (server time), else (a version 1 record, or an event that did
// not come through the event stream) by transition time. It returns -1
// (older), 0 (same instant) or +1 (newer).
//
// Server time orders the events of a backend that publishes each event
// before the job's next transition exactly, whatever its clocks say.
func compare(ev events.JobStatus, rec queue.Record) int {
	if ev.HasAttempt && rec.Attempt != nil && ev.Attempt != *rec.Attempt {
		if ev.Attempt < *rec.Attempt {
			return -1
		}
		return 1
	}
	if ev.HasAttempt && rec.Attempt != nil {
		// Of one run, its restart request comes first: it starts the run,
		// whose other events follow it whenever a copy of the request
		// arrives (a re-sent one, after the run's end).
		evRestart, recRestart := ev.Status == events.StatusRestartRequested, rec.Status == string(events.StatusRestartRequested)
		switch {
		case evRestart && !recRestart:
			return -1
		case recRestart && !evRestart:
			return 1
		}
	}
	if !ev.Stored.IsZero() && !rec.Stored.IsZero() {
		return ev.Stored.Compare(rec.Stored)
	}
	return ev.Time.Compare(rec.Time)
}

// sameRestart reports whether ev is a restart request for the run that the
// record's newest event, itself a restart request, already asked for: the
// same event redelivered (or published again), or a second request for the
// same attempt. Such an event must never flush again once the flush is done,
// or it would remove the new run's queue.
func sameRestart(ev events.JobStatus, rec queue.Record) bool {
	if rec.Status != string(events.StatusRestartRequested) {
		return false
	}
	switch {
	case ev.ID == rec.EventID:
		return true
	case ev.HasAttempt && rec.Attempt != nil:
		return ev.Attempt == *rec.Attempt
	}
	return false
}

// repeatedRestart reports whether ev asks again for the run of the last
// restart request acted on: that request itself (redelivered, or published
// again after the run moved on), or a request for the same attempt.
func repeatedRestart(ev events.JobStatus, rec queue.Record) bool {
	switch {
	case rec.RestartID != "" && ev.ID == rec.RestartID:
		return true
	case ev.HasAttempt && rec.RestartAttempt != nil:
		return ev.Attempt == *rec.RestartAttempt
	}
	return false
}

// restartDone reports whether the flush of the last restart request acted on
// has finished. A version 2 record knew only whether its newest event's
// effect was done.
func restartDone(rec queue.Record) bool {
	if rec.V >= 3 {
		return rec.RestartDone
	}
	return rec.Done || rec.Status != string(events.StatusRestartRequested)
}

// decide is the whole decision table. exists says whether the job has a
// record; busy whether another claim holds its lease.
func decide(k kind, ev events.JobStatus, rec queue.Record, exists, busy bool) verdict {
	if !exists {
		if k == kindOther {
			return recordIfTimed(ev)
		}
		return verdictAct
	}
	if ev.ID != rec.EventID && slices.Contains(rec.Seen, ev.ID) && (k != kindRestart || !repeatedRestart(ev, rec)) {
		// A copy of an event already taken into account, published again
		// after newer ones: it is not newer than they are.
		if k == kindOther {
			return verdictIgnore
		}
		return verdictStale
	}
	switch k {
	case kindRestart:
		switch {
		case sameRestart(ev, rec) || repeatedRestart(ev, rec) && rec.State == queue.StateRunning:
			// The request acted on before, or the run it starts (a
			// `pending`, a `started` of it) moved the record on: answer
			// again once its flush is done, finish the flush otherwise.
			if restartDone(rec) {
				return verdictReplay
			}
		case repeatedRestart(ev, rec) && restartDone(rec):
			return verdictReplay
		case supersedes(rec, ev):
			return verdictStale
		}
	case kindTerminal:
		if compare(ev, rec) < 0 {
			return verdictStale
		}
		if ev.ID == rec.EventID && rec.Done {
			return verdictReplay
		}
	default:
		if compare(ev, rec) > 0 {
			return recordIfTimed(ev)
		}
		return verdictIgnore
	}
	if busy {
		return verdictWait
	}
	return verdictAct
}

// supersedes reports whether the record's newest event makes restart
// request ev stale: a newer terminal status or restart request, or any event
// of a later attempt. A non-acting status of the same run (`pending`,
// `started`: the backend records them between its request and the answer)
// does not: the request still has to be answered, and its flush removes only
// what was created before it reached NATS.
func supersedes(rec queue.Record, ev events.JobStatus) bool {
	if compare(ev, rec) >= 0 {
		return false
	}
	if ev.HasAttempt && rec.Attempt != nil && ev.Attempt < *rec.Attempt {
		return true
	}
	return rec.State == queue.StateTerminal || rec.State == queue.StateFlushed
}

// resumes reports whether a restart request resumes the last restart request
// acted on (whose flush has not finished) rather than starting a new one.
func resumes(ev events.JobStatus, rec queue.Record) bool {
	return sameRestart(ev, rec) || repeatedRestart(ev, rec) && rec.State == queue.StateRunning && !restartDone(rec)
}

func recordIfTimed(ev events.JobStatus) verdict {
	if ev.Time.IsZero() && ev.Stored.IsZero() {
		return verdictIgnore // cannot be ordered against anything
	}
	return verdictRecord
}

// fenceFor says which resources an acting event may remove: those of its own
// run and earlier ones (terminal), or of earlier runs only (restart), created
// before the event reached the event stream, in server time. A restart that
// resumes an earlier copy of the same request keeps the first copy's time,
// so nothing created after the request first reached NATS (the new run's
// queue) is ever flushed.
func fenceFor(k kind, ev events.JobStatus, rec queue.Record) queue.Fence {
	at, cut := ev.Stored, "the "+string(ev.Status)+" event reached NATS"
	if k == kindRestart {
		cut = "the restart request reached NATS"
		first := rec.RestartStored
		if first.IsZero() && sameRestart(ev, rec) {
			first = rec.Stored // a version 2 record
		}
		if resumes(ev, rec) && !first.IsZero() && (at.IsZero() || first.Before(at)) {
			at, cut = first, "the restart request first reached NATS"
		}
	}
	f := queue.Fence{CreatedBefore: at, Cut: cut, PurgeFirst: cleanedRecently(rec, ev.Stored)}
	if ev.HasAttempt {
		f.AttemptKnown, f.MaxAttempt = true, ev.Attempt
		if k == kindRestart {
			f.MaxAttempt--
		}
	}
	return f
}

// recentCleanup is how long after the service last removed a job's queue a
// removal of it empties the stream first (see queue.Fence.PurgeFirst): a
// generous bound on the server's removal of a deleted stream's files.
const recentCleanup = 15 * time.Minute

// cleanedRecently reports whether the job's queue was removed within
// recentCleanup of at (the record's time is its writer's clock; replicas'
// clocks agree to well within that).
func cleanedRecently(rec queue.Record, at time.Time) bool {
	if at.IsZero() {
		at = time.Now()
	}
	return !rec.CleanedAt.IsZero() && at.Sub(rec.CleanedAt) < recentCleanup
}

// claimRecord is the record that takes the job's lease for ev.
func claimRecord(k kind, ev events.JobStatus, rec queue.Record, lease queue.Lease) queue.Record {
	if k == kindRestart && resumes(ev, rec) {
		next := rec // resume the recorded request: keep its identity and time
		next.Lease = &lease
		return next
	}
	if k == kindRestart && compare(ev, rec) < 0 {
		// Older than a status of the run it starts, recorded first: that
		// status stays the newest event; the request is recorded as the
		// restart acted on.
		next := rec
		next.RestartID, next.RestartStored, next.RestartDone, next.RestartAttempt = ev.ID, ev.Stored, false, nil
		if ev.HasAttempt {
			a := ev.Attempt
			next.RestartAttempt = &a
		}
		next.Lease = &lease
		return next
	}
	next := queue.Record{
		Attempt:   rec.Attempt,
		Time:      ev.Time,
		Stored:    ev.Stored,
		EventID:   ev.ID,
		Status:    string(ev.Status),
		State:     queue.StateTerminal,
		CleanedAt: rec.CleanedAt,
		// The last restart request acted on is kept, so that it is known
		// as a repeat if it comes back.
		RestartID:      rec.RestartID,
		RestartAttempt: rec.RestartAttempt,
		RestartStored:  rec.RestartStored,
		RestartDone:    restartDone(rec),
		Seen:           queue.Remember(rec.Seen, ev.ID),
		Effect:         rec.Effect,
		Lease:          &lease,
	}
	if k == kindRestart {
		next.State, next.RestartID, next.RestartAttempt = queue.StateFlushed, ev.ID, nil
		next.RestartStored, next.RestartDone = ev.Stored, false
		if ev.HasAttempt {
			a := ev.Attempt
			next.RestartAttempt = &a
		}
	}
	if ev.HasAttempt {
		a := ev.Attempt
		next.Attempt = &a
	}
	return next
}

// restartCause is the restart request whose flush a restart event carries
// out: the one recorded when it resumes it, else the event itself.
func restartCause(ev events.JobStatus, rec queue.Record) string {
	if resumes(ev, rec) && rec.RestartID != "" {
		return rec.RestartID
	}
	return ev.ID
}

// recordRunning is the record after a newer non-acting status: the newest
// event changes, any lease stays with its holder.
func recordRunning(ev events.JobStatus, rec queue.Record) queue.Record {
	next := rec
	next.Time, next.Stored, next.EventID, next.Status = ev.Time, ev.Stored, ev.ID, string(ev.Status)
	next.State, next.Done = queue.StateRunning, true
	next.Seen = queue.Remember(rec.Seen, ev.ID)
	next.Lease = rec.CarryLease() // still ending when its holder's last write says
	if ev.HasAttempt {
		a := ev.Attempt
		next.Attempt = &a
	}
	return next
}
