package handlers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/example/queue-janitor/queue"
)

// effect is one removal of a job's queue under a claim: an event's cleanup
// or flush, or a sweep.
type effect struct {
	id queue.JobID
	// next is the record that takes the lease (its Lease is a new one),
	// written over revision rev.
	next queue.Record
	rev  uint64
	// fence bounds what may be removed.
	fence queue.Fence
	// cause names the effect in the record (queue.Effect.Cause).
	cause string
	// prior is an earlier, unfinished attempt at the same effect, as the
	// record keeps it: what that attempt set out to remove.
	prior *queue.Effect
	// mark changes the record when the effect is done.
	mark func(queue.Record) queue.Record
	// stored is when the event that asks for it reached the event stream
	// (zero for a sweep).
	stored time.Time
	// before is the record as it was before the claim (zero: none), put
	// back when the claim gives up without sending anything.
	before queue.Record
	// answer, when set, is called once the removal is done, beside the
	// effect's record write (run waits for both), if the claim is not known
	// to be lost: an answer nobody waits on (a terminal job's `cleaned`)
	// goes out with that write instead of after its reply.
	answer func(removal queue.Removal, outcome string)
}

// errFromDeletedStream is returned by run for an event that reached an
// event stream deleted since (see gate.before): it is not acted on.
var errFromDeletedStream = errors.New("the event came from an event stream deleted since")

// run carries out e and returns what was removed; retry is true when the
// claim lost a race and the decision must be taken again. The requests, in
// order (a request in brackets only when needed):
//
//  1. the claim's write, beside a read of the job's task stream (when the
//     bucket's incarnation was admitted before: see [gate]);
//  2. the incarnation check (one request shared by concurrent claims),
//     beside the record of what is about to be removed ([the dead-letter
//     consumer's info when the stream is not removed]);
//  3. [a purge of a stream holding messages,] the dead-letter consumer's
//     delete; then the stream's delete;
//  4. the record of the effect (with e.answer beside it, when set).
//
// Nothing is removed before the claim is written and admitted, and what is
// removed was judged by reads that the claim covers.
func (h *Handler) run(ctx context.Context, e effect) (queue.Removal, string, bool, error) {
	nothing := h.nothing(e.id)
	if h.gate.before(e.stored) {
		return nothing, "", false, errFromDeletedStream
	}
	known := h.gate.known()
	if known.IsZero() {
		// No incarnation admitted yet (this process's first claim, or the
		// bucket changed): check before writing anything, so that no claim
		// is written, and released, into a bucket that is not ready.
		if _, err := h.gate.admit(ctx, time.Time{}); err != nil {
			return nothing, "", false, err
		}
		known = h.gate.known()
	}
	var (
		c        *claim
		err      error
		ins      queue.Inspection
		insErr   error
		readSide = !known.IsZero()
	)
	if readSide {
		// The read in this goroutine, the claim beside it: decoding a
		// stream's info runs deeper than the claim's write, and a fresh
		// goroutine grows its stack to what it runs (the read there was
		// most of the stack growth left in a storm's profile).
		taken := make(chan struct{})
		go func() {
			defer close(taken)
			c, err = h.take(ctx, e.id, e.next, e.rev)
		}()
		ins, insErr = h.q.Inspect(ctx, e.id, nil)
		<-taken
	} else {
		c, err = h.take(ctx, e.id, e.next, e.rev)
	}
	if errors.Is(err, queue.ErrConflict) {
		return nothing, "", true, nil
	}
	if err != nil {
		return nothing, "", false, err
	}

	type admission struct {
		same bool
		err  error
	}
	admitted := make(chan admission, 1)
	go func() {
		same, err := h.gate.admit(ctx, known)
		admitted <- admission{same, err}
	}()
	var plan queue.Plan
	var planErr error
	if readSide && insErr == nil {
		if plan, planErr = h.q.Plan(ctx, e.id, ins, e.fence, c); planErr == nil && !plan.Empty() {
			planErr = c.intend(ctx, intentOf(e.cause, plan))
		}
	}
	a := <-admitted
	if a.err == nil && h.gate.before(e.stored) {
		a.err = errFromDeletedStream
	}
	if a.err == nil && h.gate.predates(c.first) {
		// The claim was written before the bucket's records were rebuilt:
		// the record it decided on may since have been rewritten with the
		// event stream's order, which it has not judged.
		a.err = &NotReadyError{Reason: "the job's records were rebuilt from the event stream after this claim was decided; deciding again",
			RetryAfter: 50 * time.Millisecond}
	}
	if a.err != nil {
		c.release(ctx, true, e.before)
		return nothing, "", false, a.err
	}
	if !a.same || !readSide || insErr != nil || planErr != nil {
		// The reads beside the claim do not hold (the bucket changed, or
		// this process had not admitted one yet), or they failed: read and
		// judge again, now that the claim is admitted.
		if ins, err = h.q.Inspect(ctx, e.id, c); err == nil {
			if plan, err = h.q.Plan(ctx, e.id, ins, e.fence, c); err == nil && !plan.Empty() {
				err = c.intend(ctx, intentOf(e.cause, plan))
			}
		}
		if err != nil {
			c.release(ctx, true, e.before)
			return nothing, "", false, err
		}
	}

	removal, err := h.q.Execute(ctx, plan, c)
	credit(e.prior, ins, &removal)
	if err != nil {
		c.release(ctx, false, e.before)
		return removal, "", false, err
	}
	outcome := resultOf(removal)
	done := queue.Effect{Cause: e.cause, Token: c.token, Stream: plan.Stream, Finished: true, Outcome: outcome}
	report := removal
	done.Report = &report
	var answered chan struct{}
	if e.answer != nil && c.held() {
		answered = make(chan struct{})
		go func() {
			defer close(answered)
			e.answer(removal, outcome)
		}()
	}
	err = c.finish(ctx, func(cur queue.Record) queue.Record {
		cur = e.mark(cur)
		cur.Effect = &done
		return cur
	})
	if answered != nil {
		<-answered
	}
	return removal, outcome, false, err
}

// intentOf is the record of what plan is about to remove.
func intentOf(cause string, plan queue.Plan) queue.Effect {
	e := queue.Effect{Cause: cause, DeadLetter: plan.DropDeadLetter}
	if plan.DropStream {
		e.Stream, e.StreamCreated, e.Messages, e.Consumers = plan.Stream, plan.Created, plan.Messages, plan.Consumers
		e.TaskConsumer = plan.TaskConsumer
	}
	return e
}

// credit adds to r what an earlier attempt at the same effect removed: the
// stream it set out to remove (judged removable, recorded before its first
// destructive request) is gone now, or was emptied. Without this, a retry
// after a partly done attempt (a reply lost, an authority that ran out, a
// replica that froze or died after its delete) would report nothing removed.
func credit(prior *queue.Effect, ins queue.Inspection, r *queue.Removal) {
	if prior == nil || prior.Stream == "" || prior.StreamCreated.IsZero() {
		return
	}
	stillThere := ins.Info != nil && ins.Info.Created.Equal(prior.StreamCreated)
	what := fmt.Sprintf("stream %s (created %s)", prior.Stream, prior.StreamCreated.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
	switch {
	case !stillThere:
		var deleted []string
		if prior.Consumers > 0 {
			deleted = append(deleted, "consumer "+prior.Stream+"/"+prior.TaskConsumer)
			r.ConsumersRemoved += prior.Consumers
		}
		r.Deleted = append(append(deleted, "stream "+prior.Stream), r.Deleted...)
		r.MessagesDiscarded += prior.Messages
		r.Confirmed = queue.ConfirmedEarlierAttempt
		r.Notes = append(r.Notes, what+": an earlier attempt at this effect set out to remove it, and it is gone")
	case r.MessagesDiscarded < prior.Messages && containsStream(r.Deleted, prior.Stream):
		r.MessagesDiscarded = prior.Messages
		r.Notes = append(r.Notes, what+": emptied by an earlier attempt at this effect, deleted by this one")
	}
}

func containsStream(deleted []string, stream string) bool {
	return slices.Contains(deleted, "stream "+stream)
}
