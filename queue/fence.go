package queue

import (
	"fmt"
	"strconv"
	"time"
)

// Fence decides whether a resource found on the server belongs to a run that
// an event may remove. It is the last line of the safety property: an event
// about run N never deletes the queue of a later run.
//
// A resource whose metadata carries [AttemptMetadataKey] is judged by that
// number alone (the exact fence): it may be removed only when its attempt is
// at most MaxAttempt. Otherwise it is judged by its creation time, which the
// server stamps: it may be removed only when it was created before
// CreatedBefore, itself a server time (when the event reached the event
// stream, or a time read from the server). No producer's clock takes part,
// so a backend clock minutes off neither keeps a leftover nor exposes a new
// run.
type Fence struct {
	// CreatedBefore is the server time before which a resource must have
	// been created to be removable. The zero value removes nothing by time.
	CreatedBefore time.Time
	// Cut says in words what CreatedBefore is, for the reason of a kept
	// resource, e.g. "the restart request reached NATS".
	Cut string
	// MaxAttempt is the newest run whose resources may be removed. It is used
	// only when AttemptKnown is true.
	MaxAttempt int64
	// AttemptKnown says whether MaxAttempt is meaningful.
	AttemptKnown bool
	// IdleSince, when set, also requires the job's queue to show no activity
	// since then (no message stored, delivered or acked, nothing awaiting an
	// ack, no worker waiting): the reconciler's orphans are re-checked just
	// before they are deleted.
	IdleSince time.Time
	// PurgeFirst empties a stream that holds messages before deleting it.
	// nats-server (2.15.2, seen here) can bring a deleted stream's messages
	// back into a stream of the same name created after it, when that name
	// was deleted twice in a short while (the first deletion's files still
	// being removed: 10 in 1,450 quick cycles, 0 in 1,500 single deletions):
	// the caller sets it when the job's queue was removed recently.
	PurgeFirst bool
}

// Allows reports whether a resource created at created (server time) with
// the given metadata may be removed. When it may not, reason says why in
// words an operator can act on.
func (f Fence) Allows(created time.Time, metadata map[string]string) (ok bool, reason string) {
	ok, _, reason = f.judge(created, metadata)
	return ok, reason
}

// judge is Allows that also says whether what it keeps is known to be
// newer than the action's run (later is false when it keeps for want of a
// time to judge by).
func (f Fence) judge(created time.Time, metadata map[string]string) (ok, later bool, reason string) {
	if raw, found := metadata[AttemptMetadataKey]; found && f.AttemptKnown {
		attempt, err := strconv.ParseInt(raw, 10, 64)
		if err == nil {
			if attempt > f.MaxAttempt {
				return false, true, fmt.Sprintf("stamped %s=%d, a later run than attempt %d that this action may remove (attempt fence)",
					AttemptMetadataKey, attempt, f.MaxAttempt)
			}
			return true, false, ""
		}
		// An unreadable stamp is ignored: the time fence still applies.
	}
	if f.CreatedBefore.IsZero() {
		return false, false, "no server time to judge its creation by, and no attempt stamp (time fence)"
	}
	if !created.Before(f.CreatedBefore) {
		cut := f.Cut
		if cut == "" {
			cut = "the cut-off"
		}
		return false, true, fmt.Sprintf("created %s, not before %s at %s (server times): it belongs to a later run (time fence)",
			stamp(created), cut, stamp(f.CreatedBefore))
	}
	return true, false, ""
}

func stamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }
