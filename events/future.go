package events

import (
	"time"
)

// ReasonFutureTime rejects an event whose `time` lies implausibly far ahead
// of when it reached the event stream (a producer clock gone wrong). Such an
// event is dead-lettered rather than ordered: decisions do not use producer
// clocks, but a time that far off says the producer is broken.
const ReasonFutureTime Reason = "future_time"

// DefaultMaxFuture is how far ahead of its arrival at the server an event's
// `time` may be. Producer clocks within ±10 minutes of the server's are
// supported; an hour ahead is a broken clock.
const DefaultMaxFuture = time.Hour

// checkFuture rejects ev when its time is more than max after stored.
func checkFuture(ev JobStatus, stored time.Time, maxAhead time.Duration) error {
	if maxAhead <= 0 || ev.Time.IsZero() || stored.IsZero() || !ev.Time.After(stored.Add(maxAhead)) {
		return nil
	}
	return invalid(ReasonFutureTime, "event time %s is %s after it reached the event stream at %s (server time); the limit is %s (--max-event-future): fix the producer's clock",
		ev.Time.UTC().Format(time.RFC3339), ev.Time.Sub(stored).Round(time.Second), stored.UTC().Format(time.RFC3339), maxAhead)
}

// retryAfter is implemented by handler errors that say when to try again
// (another claim holds the job): the intake parks such an event instead of
// holding a concurrency slot.
type retryAfter interface {
	error
	RetryAfterDelay() time.Duration
}
