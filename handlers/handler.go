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

// ErrJobBusy is returned when another claim holds the job's lease; the
// event should be retried once the lease ends (see [BusyError]).
var ErrJobBusy = errors.New("another claim is acting on this job's queue")

// BusyError says whose lease blocks the job and for how long. It wraps
// [ErrJobBusy].
type BusyError struct {
	Holder string
	// Ends is when the lease ends unless renewed, in server time.
	Ends time.Time
	// RetryAfter is how long until then.
	RetryAfter time.Duration
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("%v (lease held by %s for %s more)", ErrJobBusy, e.Holder, e.RetryAfter.Round(time.Millisecond))
}

// RetryAfterDelay is how long to wait before handling the event again.
func (e *BusyError) RetryAfterDelay() time.Duration { return e.RetryAfter }

// Unwrap makes errors.Is(err, ErrJobBusy) true.
func (e *BusyError) Unwrap() error { return ErrJobBusy }

// Queue is what the handler needs of the job's JetStream resources: a read
// of the job's task stream, a judgement of what a fence lets go, and the
// removal itself ([queue.Janitor] has them).
type Queue interface {
	Inspect(ctx context.Context, id queue.JobID, auth queue.Authority) (queue.Inspection, error)
	Plan(ctx context.Context, id queue.JobID, ins queue.Inspection, fence queue.Fence, auth queue.Authority) (queue.Plan, error)
	Execute(ctx context.Context, plan queue.Plan, auth queue.Authority) (queue.Removal, error)
	StreamName(id queue.JobID) string
}

// Records is what the handler needs of the per-job record store.
type Records interface {
	// Get returns the record, its revision (0: none) and, in the record's
	// At, the revision's server time.
	Get(ctx context.Context, id queue.JobID) (queue.Record, uint64, error)
	Put(ctx context.Context, id queue.JobID, rec queue.Record, rev uint64) (uint64, error)
	// ServerNow is the NATS server's current time, read after the call
	// began.
	ServerNow(ctx context.Context) (time.Time, error)
	// Incarnation is the bucket's creation time and the server's time, read
	// by a request sent after the call began.
	Incarnation(ctx context.Context) (queue.Incarnation, error)
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
	// Lease is how long a claim may act on a job, from its last renewal,
	// before another may take over. It is renewed every third of its
	// length while the effect runs; a holder stops sending requests a
	// quarter of it before the end.
	Lease time.Duration
	// Owner identifies this replica in leases, for logs.
	Owner string
	// Quarantine is how long after the bucket's creation no claim acts (see
	// [gate]): a claim held in an earlier bucket of the same name, lost
	// with it, may act for up to a lease. [DefaultConfig] sets it to the
	// lease; 0 turns it off (only safe when no other process can have used
	// an earlier bucket of the name, e.g. a server started empty).
	Quarantine time.Duration
	// TrustedIncarnation, when set, is the creation time of a bucket known
	// to have had no predecessor (created by this process on a server it
	// started empty): it needs no quarantine.
	TrustedIncarnation time.Time
}

// DefaultTerminal is the contract's default terminal set.
var DefaultTerminal = []events.Status{events.StatusRevoked, events.StatusFailure, events.StatusCancelled}

// DefaultLease is the default lease: a dead holder blocks its jobs for at
// most this long.
const DefaultLease = 12 * time.Second

// DefaultConfig returns the defaults, with owner as the replica identity.
func DefaultConfig(owner string) Config {
	return Config{
		Terminal:   append([]events.Status(nil), DefaultTerminal...),
		Lease:      DefaultLease,
		Owner:      owner,
		Quarantine: DefaultLease,
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
	case c.Lease < 4*time.Second:
		return fmt.Errorf("lease %s: must be at least 4s", c.Lease)
	case c.Owner == "":
		return errors.New("owner must not be empty")
	case c.Quarantine < 0:
		return fmt.Errorf("quarantine %s: must not be negative", c.Quarantine)
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
	renew    bool
	onClaim  func(ClaimHandle)
	gate     *gate
}

// ClaimHandle is a claim as [WithClaimHook] sees it.
type ClaimHandle interface {
	// Renew writes the lease again; it reports whether the claim is still
	// held.
	Renew(ctx context.Context) bool
	// Deadline is the claim's authority: no request after it.
	Deadline() time.Time
}

var _ events.Handler = (*Handler)(nil)

// Option configures a Handler.
type Option func(*Handler)

// WithClock replaces time.Now, for tests. It measures the holder's own
// deadlines; leases are judged in server time ([Records.ServerNow]).
func WithClock(now func() time.Time) Option { return func(h *Handler) { h.now = now } }

// WithoutRenewal turns off the background renewal of leases, for the model
// checker, which renews claims as steps of its own.
func WithoutRenewal() Option { return func(h *Handler) { h.renew = false } }

// WithClaimHook calls f with every claim taken, for the model checker, which
// renews claims (see [WithoutRenewal]) as steps of its own.
func WithClaimHook(f func(ClaimHandle)) Option { return func(h *Handler) { h.onClaim = f } }

// New returns a Handler. cfg must be valid.
func New(q Queue, records Records, emit Emitter, cfg Config, opts ...Option) *Handler {
	h := &Handler{q: q, records: records, emit: emit, cfg: cfg, terminal: map[events.Status]bool{}, now: time.Now, renew: true}
	for _, s := range cfg.Terminal {
		h.terminal[s] = true
	}
	h.gate = &gate{records: records, quarantine: cfg.Quarantine, trusted: cfg.TrustedIncarnation}
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
// the event later) unless they wrap events.ErrInvalid; a [BusyError] says
// when to retry.
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
	if k != kindOther && !h.gate.known().IsZero() {
		// Claim first, read only on conflict: a job the service has no
		// record of (the common case in a storm of endings) acts as the
		// decision table says for it, without a read. The claim's write
		// creates the record only if there is none.
		if out, retry, err := h.act(ctx, k, ev, queue.Record{}, 0); !retry {
			return out, err
		}
	}
	for {
		rec, rev, err := h.records.Get(ctx, ev.JobID)
		if err != nil {
			return events.Outcome{Decision: decisionOf(k)}, err
		}
		busy, err := h.busy(ctx, rec)
		if err != nil {
			return events.Outcome{Decision: decisionOf(k)}, err
		}
		switch v := decide(k, ev, rec, rev != 0, busy != nil); v {
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
			report := h.recorded(ev.JobID, rec, causeOf(k, ev, rec))
			return out, h.announce(ctx, k, ev, report, events.OutcomeAlreadyDone, 0)
		case verdictWait:
			return events.Outcome{Decision: decisionOf(k), Result: "busy"}, busy
		case verdictAct:
			out, retry, err := h.act(ctx, k, ev, rec, rev)
			if retry {
				continue
			}
			return out, err
		}
	}
}

// busy returns a [BusyError] when the record holds a running lease, judged
// in server time; nil otherwise. It asks the server for the time only when
// there is a lease to judge.
func (h *Handler) busy(ctx context.Context, rec queue.Record) (*BusyError, error) {
	if rec.Lease == nil {
		return nil, nil
	}
	now, err := h.records.ServerNow(ctx)
	if err != nil {
		return nil, err
	}
	if !rec.LeaseLive(now) {
		return nil, nil
	}
	ends := rec.LeaseEnds()
	return &BusyError{Holder: rec.Lease.Owner, Ends: ends, RetryAfter: ends.Sub(now)}, nil
}

// act claims the job's lease, removes what the fence allows, records the
// effect and announces it: a terminal job's cleanup beside the record
// write, a restart's flush once it is recorded. retry is true when the
// claim lost a race and the decision must be taken again.
func (h *Handler) act(ctx context.Context, k kind, ev events.JobStatus, rec queue.Record, rev uint64) (events.Outcome, bool, error) {
	started := h.now()
	next := claimRecord(k, ev, rec, h.newLease(started))
	cause := causeOf(k, ev, rec)
	out := events.Outcome{Decision: decisionOf(k)}
	var (
		answered  bool
		answerErr error
		early     func(queue.Removal, string)
	)
	if k == kindTerminal {
		// Nobody waits on `cleaned` (the backend publishes nothing on it):
		// it goes out beside the record write, confirmed by a flush. Should
		// the write fail or the answer go unconfirmed, the event is handed
		// back and answered again. `flushed` lets the backend publish a new
		// round, so it waits for the record (see below).
		early = func(removal queue.Removal, outcome string) {
			answered = true
			answerErr = h.announce(ctx, k, ev, removal, outcome, h.now().Sub(started))
		}
	}
	removal, result, retry, err := h.run(ctx, effect{
		id: ev.JobID, next: next, rev: rev, fence: fenceFor(k, ev, rec), cause: cause, prior: unfinished(rec, cause), stored: ev.Stored, before: rec,
		answer: early,
		mark: func(cur queue.Record) queue.Record {
			cur.CleanedAt = h.now().UTC()
			if cur.EventID == next.EventID {
				cur.Done = true
			}
			if k == kindRestart && cur.RestartID == cause {
				cur.RestartDone = true
			}
			return cur
		},
	})
	if retry {
		return out, true, nil
	}
	if errors.Is(err, errFromDeletedStream) {
		// Not acted on, and not answered: its stream, and the records of
		// what followed it, are gone (a backend waiting on a restart takes
		// its fallback).
		return events.Outcome{Decision: events.DecisionIgnore, Result: events.ResultLostWithStream,
			Note: "the event stream it came from was deleted since, with what followed it; not acted on"}, false, nil
	}
	out.Removal = &removal
	if err != nil {
		return out, false, err
	}
	out.Result = result
	out.Note = noteOf(removal)
	if answered {
		return out, false, answerErr
	}
	// A restart's flush is recorded (by run) before it is answered: no
	// `flushed` is ever sent for a flush that is not recorded, so a request
	// redelivered after its answer is answered again (already_done) and
	// deletes nothing.
	return out, false, h.announce(ctx, k, ev, removal, out.Result, h.now().Sub(started))
}

// causeOf names the effect an acting event carries out: a restart request
// resuming the one recorded carries out that one's flush.
func causeOf(k kind, ev events.JobStatus, rec queue.Record) string {
	if k == kindRestart {
		return restartCause(ev, rec)
	}
	return ev.ID
}

// unfinished is the record's effect when it is an earlier, unfinished
// attempt at cause.
func unfinished(rec queue.Record, cause string) *queue.Effect {
	if e := rec.Effect; e != nil && e.Cause == cause && !e.Finished {
		return e
	}
	return nil
}

// recorded is what an effect already done removed, as its record keeps it,
// for an answer given again.
func (h *Handler) recorded(id queue.JobID, rec queue.Record, cause string) queue.Removal {
	if e := rec.Effect; e != nil && e.Cause == cause && e.Finished && e.Report != nil {
		r := *e.Report
		if r.Deleted == nil {
			r.Deleted = []string{}
		}
		return r
	}
	return h.nothing(id)
}

func resultOf(r queue.Removal) string {
	switch {
	case r.Removed():
		return events.OutcomeRemoved
	case len(r.Kept) > 0 && r.KeptLaterRun:
		return events.OutcomeKeptLaterRun
	case len(r.Kept) > 0:
		return events.OutcomeKept
	}
	return events.OutcomeNothing
}

// noteOf explains a removal in a few words, for the log.
func noteOf(r queue.Removal) string {
	switch {
	case r.Confirmed == queue.ConfirmedGoneOnRetry:
		return "a delete's reply was lost; the retry confirmed it gone"
	case r.Confirmed == queue.ConfirmedEarlierAttempt:
		return "removed by an earlier attempt at this effect: see notes"
	case len(r.Kept) > 0:
		return "kept what is not this run's to remove: see kept"
	}
	return ""
}

// announce emits job.queue.cleaned or job.queue.flushed.
func (h *Handler) announce(ctx context.Context, k kind, ev events.JobStatus, r queue.Removal, outcome string, took time.Duration) error {
	res := events.QueueResult{
		JobID: ev.JobID, Status: ev.Status, CauseEventID: ev.ID, Outcome: outcome, Removal: r,
		DurationMS: float64(took.Microseconds()) / 1000, EffectTime: h.now().UTC(),
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
