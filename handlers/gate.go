package handlers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrNotReady is returned while the job records cannot be trusted yet: the
// bucket was created (or recreated) less than a quarantine ago, or its
// records are being rebuilt from the event stream. The event is retried
// later (see [NotReadyError]).
var ErrNotReady = errors.New("job records not ready")

// NotReadyError says why claims must wait and for how long. It wraps
// [ErrNotReady].
type NotReadyError struct {
	Reason     string
	RetryAfter time.Duration
}

func (e *NotReadyError) Error() string {
	return fmt.Sprintf("%v: %s (retry in %s)", ErrNotReady, e.Reason, e.RetryAfter.Round(time.Millisecond))
}

// RetryAfterDelay is how long to wait before handling the event again.
func (e *NotReadyError) RetryAfterDelay() time.Duration { return e.RetryAfter }

// Unwrap makes errors.Is(err, ErrNotReady) true.
func (e *NotReadyError) Unwrap() error { return ErrNotReady }

// gate admits a claim only into a bucket incarnation that can be trusted:
//
//   - one that has lived at least the quarantine (by default a lease), so
//     that no claim written into an earlier incarnation of the bucket (lost
//     with it when it was deleted, by this service's self-healing, an
//     operator or the backend's chaos tooling) can still be acting: such a
//     claim's authority ends less than a lease after its last write, which
//     came before the new incarnation was created;
//   - whose records were rebuilt from the event stream (when a rebuilder is
//     configured), so that events older than what the lost records knew are
//     judged stale again.
//
// The check is one request (shared by concurrent claims) sent after the
// claim's write returned. A claim that lands in an incarnation that was
// deleted meanwhile is harmless: the check then sees a newer incarnation,
// created after the claim, and if that one has already lived a quarantine,
// more than a lease has passed since the claim and its authority has ended.
type gate struct {
	records    Records
	quarantine time.Duration
	trusted    time.Time // an incarnation known to have had no predecessor
	rebuild    *Rebuilder

	mu       sync.Mutex
	verified time.Time // the incarnation last admitted
	// from is when the event stream its records were rebuilt from was
	// created (zero: not rebuilt here, or no rebuilder).
	from time.Time
	// rebuilt is the revision of that incarnation's rebuild marker (0: no
	// rebuilder): a record written at a lower revision may predate the
	// rebuild's write of it.
	rebuilt uint64
}

// known returns the incarnation last admitted (zero: none yet). Reads sent
// after it was admitted and before a claim are as good as reads sent after
// the claim, if the claim's check finds the same incarnation.
func (g *gate) known() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.verified
}

// admit runs after a claim's write returned. It reports whether the bucket
// is still the incarnation before (so reads sent beside the claim hold), or
// a [NotReadyError] while claims must wait.
func (g *gate) admit(ctx context.Context, before time.Time) (same bool, err error) {
	inc, err := g.records.Incarnation(ctx)
	if err != nil {
		return false, err
	}
	if age := inc.Age(); age < g.quarantine && !inc.Created.Equal(g.trusted) {
		g.forget()
		return false, &NotReadyError{
			Reason: fmt.Sprintf("the key-value bucket was created %s ago (server time %s); a claim held in an earlier bucket of that name may still act for up to %s, so nothing is removed until then",
				age.Round(time.Millisecond), inc.Created.UTC().Format(time.RFC3339Nano), g.quarantine),
			RetryAfter: g.quarantine - age,
		}
	}
	if g.rebuild != nil && !inc.Created.Equal(g.known()) {
		from, rev, err := g.rebuild.ready(ctx, inc)
		if err != nil {
			g.forget()
			return false, err
		}
		g.mu.Lock()
		g.from, g.rebuilt = from, rev
		g.mu.Unlock()
	}
	g.mu.Lock()
	g.verified = inc.Created
	g.mu.Unlock()
	return !before.IsZero() && before.Equal(inc.Created), nil
}

// before reports whether an event stored at stored came from an event stream
// older than the one the admitted bucket's records were rebuilt from: one
// deleted since, whose events the records do not know, nor what followed
// them.
func (g *gate) before(stored time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !stored.IsZero() && stored.Before(g.from)
}

// predates reports whether a claim first written at revision first came
// before the admitted incarnation's records were rebuilt: the rebuild may
// have rewritten the record after the claim's decision was made on it
// (keeping the claim's lease), so the decision must be taken again.
func (g *gate) predates(first uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return first < g.rebuilt
}

func (g *gate) forget() {
	g.mu.Lock()
	g.verified = time.Time{}
	g.mu.Unlock()
}

// Ready reports whether claims can act now: nil, a [NotReadyError] while the
// bucket is new or its records are being rebuilt, or the error that kept it
// from knowing. Claims check for themselves; this lets a caller that would
// act on many jobs (the reconciler) skip a pass that cannot act.
func (h *Handler) Ready(ctx context.Context) error {
	if !h.gate.known().IsZero() {
		return nil
	}
	_, err := h.gate.admit(ctx, time.Time{})
	return err
}
