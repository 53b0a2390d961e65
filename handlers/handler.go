// Package handlers decides what a job-status event means for the job's
// queue and carries it out: a terminal status cleans the queue, a restart
// request flushes leftovers before the backend publishes a new round, and
// anything else is recorded or ignored.
//
// Every decision rests on the job's record (the newest event seen, kept with
// compare-and-set) and on a lease in that record that lets one replica at a
// time act on a job's queue. An event older than the record is stale and
// never deletes anything; the queue package's fence keeps a later run's
// resources even when the record could not tell.
package handlers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// ErrJobBusy is returned when another replica held the job's lease for
// longer than the handler was willing to wait; the event should be retried.
var ErrJobBusy = errors.New("another replica is acting on this job's queue")

// Queue is what the handler needs of the job's JetStream resources.
type Queue interface {
	Remove(ctx context.Context, id queue.JobID, fence queue.Fence) (queue.Removal, error)
	StreamName(id queue.JobID) string
}

// Records is what the handler needs of the per-job record store.
type Records interface {
	Get(ctx context.Context, id queue.JobID) (queue.Record, uint64, error)
	Put(ctx context.Context, id queue.JobID, rec queue.Record, rev uint64) (uint64, error)
}

// Emitter tells the backend that an effect is done.
type Emitter interface {
	Cleaned(ctx context.Context, r events.QueueResult) error
	Flushed(ctx context.Context, r events.QueueResult) error
}

// Config holds the decisions' settings.
type Config struct {
	// Terminal lists the statuses whose queue is cleaned.
	Terminal []events.Status
	// ClockSkew is how far the backend's clock (event times) and the NATS
	// server's clock (stream creation times) may disagree. A stream created
	// less than ClockSkew before the event is kept, in doubt.
	ClockSkew time.Duration
	// Lease is how long a replica may act on a job before another may take
	// over; it must exceed the longest cleanup.
	Lease time.Duration
	// BusyWait is how long to wait for another replica's lease before
	// handing the event back for a later retry.
	BusyWait time.Duration
	// Owner identifies this replica in leases; it must be unique per process.
	Owner string
}

// DefaultTerminal is the contract's default terminal set.
var DefaultTerminal = []events.Status{events.StatusRevoked, events.StatusFailure, events.StatusCancelled}

// DefaultConfig returns the defaults, with owner as the replica identity.
func DefaultConfig(owner string) Config {
	return Config{
		Terminal:  append([]events.Status(nil), DefaultTerminal...),
		ClockSkew: 2 * time.Second,
		Lease:     time.Minute,
		BusyWait:  15 * time.Second,
		Owner:     owner,
	}
}

// Validate names the first bad field.
func (c Config) Validate() error {
	if len(c.Terminal) == 0 {
		return errors.New("terminal statuses: at least one is needed")
	}
	for _, s := range c.Terminal {
		switch s {
		case events.StatusRestartRequested:
			return fmt.Errorf("terminal statuses: %s cannot be terminal", s)
		case "":
			return errors.New("terminal statuses: empty status")
		}
	}
	switch {
	case c.ClockSkew < 0:
		return errors.New("clock skew must not be negative")
	case c.Lease < 4*time.Second:
		return fmt.Errorf("lease %s: must be at least 4s", c.Lease)
	case c.BusyWait <= 0:
		return errors.New("busy wait must be positive")
	case c.Owner == "":
		return errors.New("owner must not be empty")
	}
	return nil
}

// Handler implements events.Handler.
type Handler struct {
	q        Queue
	records  Records
	emit     Emitter
	cfg      Config
	terminal map[events.Status]bool
	now      func() time.Time
}

var _ events.Handler = (*Handler)(nil)

// Option configures a Handler.
type Option func(*Handler)

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(h *Handler) { h.now = now } }

// New returns a Handler. cfg must be valid.
func New(q Queue, records Records, emit Emitter, cfg Config, opts ...Option) *Handler {
	h := &Handler{q: q, records: records, emit: emit, cfg: cfg, terminal: map[events.Status]bool{}, now: time.Now}
	for _, s := range cfg.Terminal {
		h.terminal[s] = true
	}
	for _, opt := range opts {
		opt(h)
	}
	return h
}

// IsTerminal reports whether status is in the configured terminal set.
func (h *Handler) IsTerminal(s events.Status) bool { return h.terminal[s] }

func (h *Handler) kindOf(s events.Status) kind {
	switch {
	case s == events.StatusRestartRequested:
		return kindRestart
	case h.terminal[s]:
		return kindTerminal
	}
	return kindOther
}

func decisionOf(k kind) events.Decision {
	switch k {
	case kindTerminal:
		return events.DecisionCleanup
	case kindRestart:
		return events.DecisionFlush
	}
	return events.DecisionIgnore
}

// Handle decides and carries out what ev asks. Errors are transient (retry
// the event later) unless they wrap events.ErrInvalid.
func (h *Handler) Handle(ctx context.Context, ev events.JobStatus) (events.Outcome, error) {
	k := h.kindOf(ev.Status)
	if !ev.HasQueue() {
		out := events.Outcome{Decision: events.DecisionIgnore, Result: "no_queue",
			Note: fmt.Sprintf("dispatch_mode %q has no task queue", ev.DispatchMode)}
		if k == kindOther {
			return out, nil
		}
		// A backend waiting on the handshake still gets its answer.
		return out, h.announce(ctx, k, ev, h.nothing(ev.JobID), events.OutcomeNothing, 0)
	}
	// The wait for another replica is bounded in real time, whatever the
	// clock that judges leases says.
	waited := time.NewTimer(h.cfg.BusyWait)
	defer waited.Stop()
	pause := 20 * time.Millisecond
	for {
		rec, rev, err := h.records.Get(ctx, ev.JobID)
		if err != nil {
			return events.Outcome{Decision: decisionOf(k)}, err
		}
		switch v := decide(k, ev, rec, rev != 0, h.cfg.Owner, h.now()); v {
		case verdictStale:
			out := events.Outcome{Decision: events.DecisionStale, Result: "skipped", Note: staleNote(rec)}
			if k == kindRestart {
				// A backend may be waiting on this request: tell it that it
				// was superseded.
				return out, h.announce(ctx, k, ev, h.nothing(ev.JobID), events.OutcomeStale, 0)
			}
			return out, nil
		case verdictIgnore:
			return events.Outcome{Decision: events.DecisionIgnore, Result: "ignored"}, nil
		case verdictRecord:
			if _, err := h.records.Put(ctx, ev.JobID, recordRunning(ev, rec), rev); errors.Is(err, queue.ErrConflict) {
				continue
			} else if err != nil {
				return events.Outcome{Decision: events.DecisionIgnore}, err
			}
			return events.Outcome{Decision: events.DecisionIgnore, Result: "recorded"}, nil
		case verdictReplay:
			out := events.Outcome{Decision: decisionOf(k), Result: events.OutcomeAlreadyDone,
				Note: "effect already done for this run; answering again"}
			return out, h.announce(ctx, k, ev, h.nothing(ev.JobID), events.OutcomeAlreadyDone, 0)
		case verdictWait:
			select {
			case <-waited.C:
				return events.Outcome{Decision: decisionOf(k)}, fmt.Errorf("%w (lease held by %s until %s)", ErrJobBusy,
					rec.Lease.Owner, rec.Lease.Until.UTC().Format(time.RFC3339))
			case <-ctx.Done():
				return events.Outcome{Decision: decisionOf(k)}, ctx.Err()
			case <-time.After(pause):
			}
			pause = min(pause*2, 500*time.Millisecond)
		case verdictAct:
			out, retry, err := h.act(ctx, k, ev, rec, rev)
			if retry {
				continue
			}
			return out, err
		}
	}
}

// act claims the job's lease, removes what the fence allows, records the
// effect and announces it. retry is true when the claim lost a race and the
// decision must be taken again.
func (h *Handler) act(ctx context.Context, k kind, ev events.JobStatus, rec queue.Record, rev uint64) (events.Outcome, bool, error) {
	started := h.now()
	lease := queue.Lease{Owner: h.cfg.Owner, Until: started.Add(h.cfg.Lease)}
	next := claim(k, ev, rec, lease)
	rev, err := h.records.Put(ctx, ev.JobID, next, rev)
	if errors.Is(err, queue.ErrConflict) {
		return events.Outcome{}, true, nil
	}
	out := events.Outcome{Decision: decisionOf(k)}
	if err != nil {
		return out, false, err
	}
	// Stop starting deletes well before the lease ends, so that a replica
	// taking over an expired lease never races this one.
	validUntil := lease.Until.Add(-h.cfg.Lease / 4)
	removal, err := h.q.Remove(ctx, ev.JobID, fenceFor(k, ev, rec, h.cfg.ClockSkew, validUntil))
	out.Removal = &removal
	if err != nil {
		h.release(ctx, ev.JobID, next, rev)
		return out, false, err
	}
	out.Result = resultOf(removal)
	if len(removal.Kept) > 0 {
		out.Note = "kept resources of a later run"
	}
	// Answer first: the deletes are done and nothing more will be deleted,
	// so the waiting backend may publish now. Then record. Should the
	// process die in between, the redelivered event acts again under the
	// fence, which keeps the new run's stream (created after the request).
	announced := h.announce(ctx, k, ev, removal, out.Result, h.now().Sub(started))
	if err := h.finish(ctx, ev.JobID, next, rev); err != nil {
		return out, false, err
	}
	return out, false, announced
}

func resultOf(r queue.Removal) string {
	switch {
	case r.Removed():
		return events.OutcomeRemoved
	case len(r.Kept) > 0:
		return events.OutcomeKeptLaterRun
	}
	return events.OutcomeNothing
}

// finish marks the effect done and gives the lease back. When the record
// moved on meanwhile (a newer status arrived), only the lease is released.
func (h *Handler) finish(ctx context.Context, id queue.JobID, claimed queue.Record, rev uint64) error {
	rec := claimed
	for range 8 {
		if rec.Lease == nil || rec.Lease.Owner != h.cfg.Owner {
			return nil // the lease expired and was taken over; that replica finishes
		}
		next := rec
		next.Lease = nil
		next.CleanedAt = h.now().UTC()
		if rec.EventID == claimed.EventID {
			next.Done = true
		}
		_, err := h.records.Put(ctx, id, next, rev)
		if !errors.Is(err, queue.ErrConflict) {
			return err
		}
		if rec, rev, err = h.records.Get(ctx, id); err != nil {
			return err
		}
	}
	return fmt.Errorf("record of job %d kept changing; could not mark the effect done", id)
}

// release gives the lease back after a failure, so that the retry need not
// wait for it to expire. A failure here is harmless: the lease expires.
func (h *Handler) release(ctx context.Context, id queue.JobID, claimed queue.Record, rev uint64) {
	next := claimed
	next.Lease = nil
	_, _ = h.records.Put(context.WithoutCancel(ctx), id, next, rev)
}

// announce emits job.queue.cleaned or job.queue.flushed.
func (h *Handler) announce(ctx context.Context, k kind, ev events.JobStatus, r queue.Removal, outcome string, took time.Duration) error {
	res := events.QueueResult{
		JobID: ev.JobID, Status: ev.Status, CauseEventID: ev.ID, Outcome: outcome, Removal: r,
		DurationMS: float64(took.Microseconds()) / 1000,
	}
	if ev.HasAttempt {
		a := ev.Attempt
		res.Attempt = &a
	}
	switch k {
	case kindTerminal:
		return h.emit.Cleaned(ctx, res)
	case kindRestart:
		return h.emit.Flushed(ctx, res)
	}
	return nil
}

// nothing is the report of an answer that removed nothing.
func (h *Handler) nothing(id queue.JobID) queue.Removal {
	return queue.Removal{Stream: h.q.StreamName(id), Deleted: []string{}}
}

func staleNote(rec queue.Record) string {
	var b strings.Builder
	b.WriteString("record has newer event ")
	b.WriteString(rec.EventID)
	b.WriteString(" (")
	b.WriteString(rec.Status)
	if rec.Attempt != nil {
		fmt.Fprintf(&b, ", attempt %d", *rec.Attempt)
	}
	b.WriteString(", ")
	b.WriteString(rec.Time.UTC().Format(time.RFC3339Nano))
	b.WriteString(")")
	return b.String()
}
