package handlers

import (
	"errors"
	"testing"
	"time"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// TestRestartWhoseFlushFailedIsFlushedWhenItComesBack is issue 23's third
// way through: a restart request is claimed, its flush fails, and the run it
// starts records `pending` (as the backend does between Start and the new
// round). The redelivered request must flush, not answer already_done over
// the leftover.
func TestRestartWhoseFlushFailedIsFlushedWhenItComesBack(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.handle(t, ev("t1", events.StatusRevoked, 1, 10))
	w.q.err = errors.New("nats: timeout") // the flush gets no answer within its retries
	if _, err := w.h.Handle(t.Context(), ev("r2", events.StatusRestartRequested, 2, 20)); err == nil {
		t.Fatal("the failed flush must fail the event")
	}
	w.q.err = nil
	if out := w.handle(t, ev("p2", events.StatusPending, 2, 25)); out.Result != "recorded" {
		t.Fatalf("pending: %+v", out)
	}
	out := w.handle(t, ev("r2", events.StatusRestartRequested, 2, 20))
	if out.Result != events.OutcomeRemoved {
		t.Fatalf("redelivered restart = %+v; want its flush done now (removed), not %q", out, out.Result)
	}
	fences := w.q.removes()
	last := fences[len(fences)-1]
	if !last.CreatedBefore.Equal(at(20)) || last.MaxAttempt != 1 {
		t.Fatalf("flush fence = %+v; want the request's first arrival (%s) and attempts below 2", last, at(20))
	}
	r := w.record(t)
	if !r.RestartDone || r.RestartID != "r2" || r.EventID != "p2" || r.Lease != nil {
		t.Fatalf("record = %+v; want the restart's flush recorded done, the newest event still pending", r)
	}
	// Once done, it comes back as a repeat.
	if out := w.handle(t, ev("r2", events.StatusRestartRequested, 2, 20)); out.Result != events.OutcomeAlreadyDone {
		t.Fatalf("third delivery = %+v; want already_done", out)
	}
	_, f := w.emit.counts()
	if f != 2 || w.emit.flushed[1].Outcome != events.OutcomeAlreadyDone || w.emit.flushed[1].MessagesDiscarded != 5 {
		t.Fatalf("answers = %+v; want removed, then already_done with the counts", w.emit.flushed)
	}
}

// TestRepeatedAnswerCarriesTheCounts: an effect answered again (a
// redelivery after its answer) says what was removed, from the record.
func TestRepeatedAnswerCarriesTheCounts(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.handle(t, ev("t1", events.StatusRevoked, 1, 10))
	if out := w.handle(t, ev("t1", events.StatusRevoked, 1, 10)); out.Result != events.OutcomeAlreadyDone {
		t.Fatalf("redelivery = %+v", out)
	}
	c, _ := w.emit.counts()
	if c != 2 {
		t.Fatalf("%d answers", c)
	}
	again := w.emit.cleaned[1]
	if again.Outcome != events.OutcomeAlreadyDone || again.MessagesDiscarded != 5 || len(again.Deleted) != 1 {
		t.Fatalf("repeated answer = %+v; want already_done with the first answer's counts", again)
	}
}

// TestLostReplyToTheLastRecordWriteIsNotALostLease: the finishing write
// lands but its reply is lost, so its retry conflicts with itself. The
// claim recognizes its own write; the effect is answered `removed`.
func TestLostReplyToTheLastRecordWriteIsNotALostLease(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.q.during = func() {
		w.records.loseNextReply = true // the finishing write is the next one after the removal
	}
	out, err := w.h.Handle(t.Context(), ev("t1", events.StatusRevoked, 1, 10))
	if err != nil || out.Result != events.OutcomeRemoved {
		t.Fatalf("Handle = %+v, %v; want removed", out, err)
	}
	if c, _ := w.emit.counts(); c != 1 || w.emit.cleaned[0].MessagesDiscarded != 5 {
		t.Fatalf("answers = %+v", w.emit.cleaned)
	}
	if r := w.record(t); !r.Done || r.Lease != nil {
		t.Fatalf("record = %+v", r)
	}
}

// TestEarlierAttemptsRemovalIsReported: the first attempt recorded what it
// was about to remove, deleted it and failed before recording the effect (an
// authority that ran out, a replica that froze); the next attempt finds the
// stream gone and reports it removed by the earlier attempt, with its counts.
func TestEarlierAttemptsRemovalIsReported(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.q.err = queue.ErrAuthorityExpired
	if _, err := w.h.Handle(t.Context(), ev("t1", events.StatusRevoked, 1, 10)); !errors.Is(err, queue.ErrAuthorityExpired) {
		t.Fatalf("first attempt: %v", err)
	}
	if r := w.record(t); r.Effect == nil || r.Effect.Finished || r.Effect.Messages != 5 || r.Effect.Cause != "t1" {
		t.Fatalf("record after the failed attempt = %+v; want its intent kept", r.Effect)
	}
	w.q.err = nil
	w.q.removal = queue.Removal{Deleted: []string{}} // the stream is gone now
	w.q.gone = true
	w.now = w.now.Add(time.Second)
	out := w.handle(t, ev("t1", events.StatusRevoked, 1, 10))
	if out.Result != events.OutcomeRemoved || out.Removal.Confirmed != queue.ConfirmedEarlierAttempt || out.Removal.MessagesDiscarded != 5 {
		t.Fatalf("second attempt = %+v %+v; want removed by the earlier attempt, 5 messages", out, out.Removal)
	}
}

// TestReconcilerDoesNotAnswerForAnEffectDoneMeanwhile: the reconciler judged
// a record; the event's own cleanup finished before the sweep; the sweep
// neither acts nor answers.
func TestReconcilerDoesNotAnswerForAnEffectDoneMeanwhile(t *testing.T) {
	t.Parallel()
	w := setup(t)
	w.handle(t, ev("b1", events.StatusStarted, 1, 5))
	judged, rev, err := w.records.Get(t.Context(), 7)
	if err != nil {
		t.Fatal(err)
	}
	w.handle(t, ev("t1", events.StatusRevoked, 1, 10)) // the event's cleanup, after the judgement
	calls := len(w.q.removes())
	_, err = w.h.Sweep(t.Context(), SweepRequest{ID: 7, Judged: judged, JudgedRev: rev, Fence: queue.Fence{CreatedBefore: at(10)},
		Trigger: TriggerReconciler})
	if !errors.Is(err, ErrRecordChanged) {
		t.Fatalf("Sweep: %v; want ErrRecordChanged", err)
	}
	if len(w.q.removes()) != calls {
		t.Fatal("the sweep acted")
	}
	if c, _ := w.emit.counts(); c != 1 {
		t.Fatalf("%d cleaned answers; want only the event's", c)
	}
}
