package handlers

import (
	"context"
	"errors"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// Triggers of a removal that no event asked for, as QueueResult.Trigger.
const (
	TriggerReconciler = "reconciler"
	TriggerOperator   = "operator"
)

// Announce says which event a sweep emits.
type Announce int

// What a sweep announces.
const (
	AnnounceCleaned Announce = iota
	AnnounceFlushed
)

// SweepRequest is a removal that no status event asked for: the
// reconciler's, or an operator's.
type SweepRequest struct {
	ID queue.JobID
	// Judged is the record the decision was taken on, at revision JudgedRev
	// (0: the job had none); the sweep goes ahead only if the record is
	// still at that revision, so that an event's effect done meanwhile is
	// never swept (and answered) again.
	Judged    queue.Record
	JudgedRev uint64
	// Fence bounds what may be removed.
	Fence queue.Fence
	// Trigger is TriggerReconciler or TriggerOperator.
	Trigger  string
	Announce Announce
}

// ErrRecordChanged is returned by Sweep when the job's record moved on after
// the decision (a new event arrived, or an event's effect was done): the
// decision must be taken again.
var ErrRecordChanged = errors.New("the job's record changed since the decision")

// Sweep removes a job's queue as the reconciler or an operator decided,
// through the same claim, fence, record and announcement as an event's
// cleanup. It returns ErrRecordChanged, or a [BusyError], when it must not
// act now. The reconciler announces only what it removed; an operator's
// command is always answered.
func (h *Handler) Sweep(ctx context.Context, req SweepRequest) (events.Outcome, error) {
	out := events.Outcome{Decision: events.DecisionCleanup}
	if req.Announce == AnnounceFlushed {
		out.Decision = events.DecisionFlush
	}
	for {
		rec, rev, err := h.records.Get(ctx, req.ID)
		if err != nil {
			return out, err
		}
		if rev != req.JudgedRev {
			return events.Outcome{Decision: events.DecisionIgnore, Result: "record_changed"}, ErrRecordChanged
		}
		busy, err := h.busy(ctx, rec)
		if err != nil {
			return out, err
		}
		if busy != nil {
			return events.Outcome{Decision: events.DecisionIgnore, Result: "busy"}, busy
		}
		started := h.now()
		claimed := rec
		lease := h.newLease(started)
		claimed.Lease = &lease
		cause := req.Trigger + ":" + lease.Token
		fence := req.Fence
		fence.PurgeFirst = fence.PurgeFirst || cleanedRecently(rec, h.now())
		removal, result, retry, err := h.run(ctx, effect{id: req.ID, next: claimed, rev: rev, fence: fence, cause: cause, before: rec,
			mark: func(cur queue.Record) queue.Record {
				cur.CleanedAt = h.now().UTC()
				if cur.EventID == rec.EventID {
					cur.Done = true // the judged event's effect is now done
				}
				return cur
			}})
		if retry {
			continue
		}
		out.Removal = &removal
		if err != nil {
			return out, err
		}
		out.Result = result
		out.Note = "removed by the " + req.Trigger
		if n := noteOf(removal); n != "" {
			out.Note += "; " + n
		}
		if req.Trigger == TriggerReconciler && !removal.Removed() {
			return out, nil // nothing was there to remove: nothing to announce
		}
		res := events.QueueResult{
			JobID: req.ID, Status: events.Status(rec.Status), CauseEventID: rec.EventID, Outcome: out.Result,
			Removal: removal, Trigger: req.Trigger, Attempt: rec.Attempt,
			DurationMS: float64(h.now().Sub(started).Microseconds()) / 1000, EffectTime: h.now().UTC(),
		}
		if res.Status == "" {
			// No event known for the job: the answer names who acted.
			res.Status, res.CauseEventID = events.StatusUnknown, cause
		}
		if req.Announce == AnnounceFlushed {
			return out, h.emit.Flushed(ctx, res)
		}
		return out, h.emit.Cleaned(ctx, res)
	}
}
