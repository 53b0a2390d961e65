package handlers

import (
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

// compare orders an event against the newest event in the record: by attempt
// when both carry one and they differ, else by transition time. It returns
// -1 (older), 0 (same instant) or +1 (newer).
func compare(ev events.JobStatus, rec queue.Record) int {
	if ev.HasAttempt && rec.Attempt != nil && ev.Attempt != *rec.Attempt {
		if ev.Attempt < *rec.Attempt {
			return -1
		}
		return 1
	}
	return ev.Time.Compare(rec.Time)
}

// sameRestart reports whether ev is a restart request for the run that the
// record's newest event, itself a restart request, already asked for: the
// same event redelivered, or a second request for the same attempt. Such an
// event must never flush again, or it would remove the new run's queue.
func sameRestart(ev events.JobStatus, rec queue.Record) bool {
	if rec.Status != string(events.StatusRestartRequested) {
		return false
	}
	switch {
	case ev.ID == rec.EventID:
		return true
	case ev.HasAttempt && rec.Attempt != nil:
		return ev.Attempt == *rec.Attempt
	case !ev.HasAttempt && rec.Attempt == nil:
		return ev.Time.Equal(rec.Time)
	}
	return false
}

// decide is the whole decision table. exists says whether the job has a
// record; owner is this replica; now is the current time.
func decide(k kind, ev events.JobStatus, rec queue.Record, exists bool, owner string, now time.Time) verdict {
	if !exists {
		if k == kindOther {
			return recordIfTimed(ev)
		}
		return verdictAct
	}
	busy := rec.HeldBy(owner, now)
	switch k {
	case kindRestart:
		if sameRestart(ev, rec) {
			switch {
			case rec.Done:
				return verdictReplay
			case busy:
				return verdictWait
			}
			return verdictAct
		}
		if compare(ev, rec) < 0 {
			return verdictStale
		}
	case kindTerminal:
		c := compare(ev, rec)
		if c < 0 {
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

func recordIfTimed(ev events.JobStatus) verdict {
	if ev.Time.IsZero() {
		return verdictIgnore // cannot be ordered against anything
	}
	return verdictRecord
}

// fenceFor says which resources an acting event may remove: those of its own
// run and earlier ones (terminal), or of earlier runs only (restart), created
// before the event's time minus the clock-skew allowance.
func fenceFor(k kind, ev events.JobStatus, rec queue.Record, skew time.Duration, validUntil time.Time) queue.Fence {
	at := ev.Time
	if k == kindRestart && sameRestart(ev, rec) && rec.Time.Before(at) {
		at = rec.Time // resuming an earlier request for the same run
	}
	f := queue.Fence{CreatedBefore: at.Add(-skew), ValidUntil: validUntil}
	if ev.HasAttempt {
		f.AttemptKnown, f.MaxAttempt = true, ev.Attempt
		if k == kindRestart {
			f.MaxAttempt--
		}
	}
	return f
}

// claim is the record that takes the job's lease for ev.
func claim(k kind, ev events.JobStatus, rec queue.Record, lease queue.Lease) queue.Record {
	if k == kindRestart && sameRestart(ev, rec) {
		next := rec // resume the recorded request: keep its identity
		next.Lease = &lease
		return next
	}
	next := queue.Record{
		Attempt:   rec.Attempt,
		Time:      ev.Time,
		EventID:   ev.ID,
		Status:    string(ev.Status),
		State:     queue.StateTerminal,
		CleanedAt: rec.CleanedAt,
		Lease:     &lease,
	}
	if k == kindRestart {
		next.State = queue.StateFlushed
	}
	if ev.HasAttempt {
		a := ev.Attempt
		next.Attempt = &a
	}
	return next
}

// recordRunning is the record after a newer non-acting status: the newest
// event changes, any lease stays with its holder.
func recordRunning(ev events.JobStatus, rec queue.Record) queue.Record {
	next := rec
	next.Time, next.EventID, next.Status = ev.Time, ev.ID, string(ev.Status)
	next.State, next.Done = queue.StateRunning, true
	if ev.HasAttempt {
		a := ev.Attempt
		next.Attempt = &a
	}
	return next
}
