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
// at most MaxAttempt. Otherwise it is judged by its server-side creation time:
// it may be removed only when it was created before CreatedBefore, which the
// caller sets to the event's time minus the allowed clock skew, so that a
// doubtful case keeps the queue.
type Fence struct {
	// CreatedBefore is the instant before which a resource must have been
	// created to be removable. The zero value removes nothing by time.
	CreatedBefore time.Time
	// MaxAttempt is the newest run whose resources may be removed. It is used
	// only when AttemptKnown is true.
	MaxAttempt int64
	// AttemptKnown says whether MaxAttempt is meaningful.
	AttemptKnown bool
	// ValidUntil, when set, is the instant after which no delete may be
	// started under this fence: the end of the caller's lease on the job.
	ValidUntil time.Time
}

// Allows reports whether a resource created at created with the given
// metadata may be removed. When it may not, reason says why, for logs.
func (f Fence) Allows(created time.Time, metadata map[string]string) (ok bool, reason string) {
	if raw, found := metadata[AttemptMetadataKey]; found && f.AttemptKnown {
		attempt, err := strconv.ParseInt(raw, 10, 64)
		if err == nil {
			if attempt > f.MaxAttempt {
				return false, fmt.Sprintf("belongs to attempt %d, later than %d", attempt, f.MaxAttempt)
			}
			return true, ""
		}
		// An unreadable stamp is ignored: the time fence still applies.
	}
	if !created.Before(f.CreatedBefore) {
		return false, fmt.Sprintf("created %s, not before %s", created.UTC().Format(time.RFC3339Nano),
			f.CreatedBefore.UTC().Format(time.RFC3339Nano))
	}
	return true, ""
}
