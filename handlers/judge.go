package handlers

import (
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/queue"
)

// Verdict is what the reconciler makes of a job stream.
type Verdict string

// The verdicts.
const (
	// VerdictClean: a terminal job's leftover; it is removed.
	VerdictClean Verdict = "clean"
	// VerdictGrace: a terminal job's stream, within the grace period; a
	// later pass removes it unless a restart arrives meanwhile.
	VerdictGrace Verdict = "grace"
	// VerdictOrphan: the job is unknown to the service and its stream has
	// been idle past the threshold; reported, removed only when orphan
	// sweeping is on.
	VerdictOrphan Verdict = "orphan"
	// VerdictKeep: a live job's queue, a later run's, or a busy unknown one.
	VerdictKeep Verdict = "keep"
	// VerdictBusy: a replica holds the job's lease right now.
	VerdictBusy Verdict = "busy"
)

// Job states as the triage metrics and `ls` show them.
const (
	JobStateTerminal = "terminal"
	JobStateLive     = "live"
	JobStateUnknown  = "unknown"
)

// SweepConfig holds the reconciler's settings.
type SweepConfig struct {
	// Grace is how long after a terminal event (and after its creation) a
	// stream waits before the reconciler removes it.
	Grace time.Duration
	// OrphanIdle is how long a stream of an unknown job must be idle (no new
	// message, no delivery, no ack) to be an orphan.
	OrphanIdle time.Duration
	// SweepOrphans removes orphans instead of only reporting them.
	SweepOrphans bool
}

// Judgement is a verdict with its reason and, when Remove, the fence the
// removal must respect.
type Judgement struct {
	Verdict  Verdict
	Reason   string
	JobState string
	Remove   bool
	Fence    queue.Fence
}

// JobStateOf maps a record to the triage state.
func JobStateOf(rec queue.Record, exists bool) string {
	switch {
	case !exists || rec.State == "":
		return JobStateUnknown
	case rec.State == queue.StateTerminal:
		return JobStateTerminal
	}
	return JobStateLive
}

// Judge decides what the reconciler does with one job stream. consumer is
// the job's task consumer, nil when missing or not looked up. Times are
// judged in the server's clock: the listing's timestamp when it has one,
// else now.
func Judge(s queue.JobStream, consumer *jetstream.ConsumerInfo, rec queue.Record, exists bool, now time.Time, cfg SweepConfig) Judgement {
	if !s.Info.TimeStamp.IsZero() {
		now = s.Info.TimeStamp
	}
	state := JobStateOf(rec, exists)
	j := Judgement{JobState: state, Verdict: VerdictKeep}
	if rec.LeaseLive(now) {
		j.Verdict, j.Reason = VerdictBusy, "replica "+rec.Lease.Owner+" is acting on it"
		return j
	}
	created := s.Info.Created
	switch state {
	case JobStateLive:
		j.Reason = fmt.Sprintf("job is %s (last event %s)", rec.State, rec.Status)
	case JobStateUnknown:
		cut := now.Add(-cfg.OrphanIdle)
		if why := activity(s, consumer, now, cut); why != "" {
			j.Reason = "unknown job, active: " + why
			return j
		}
		j.Verdict, j.Remove = VerdictOrphan, cfg.SweepOrphans
		j.Reason = fmt.Sprintf("unknown job, idle for %s", roundAge(now.Sub(LastActivity(s, consumer))))
		j.Fence = queue.Fence{CreatedBefore: cut, Cut: "the idle cut-off (--orphan-idle)", IdleSince: cut}
	case JobStateTerminal:
		if later, ok := stampedLater(s, rec); ok {
			j.Reason = fmt.Sprintf("stream belongs to attempt %d, after the terminal attempt", later)
			return j
		}
		ended, endedCut := rec.Stored, "the job's "+rec.Status+" event reached NATS"
		if ended.IsZero() {
			ended, endedCut = rec.Time, "the job's "+rec.Status+" event (its own time)" // a version 1 record
		}
		if created.Before(ended) {
			j.Reason = fmt.Sprintf("job ended (%s) %s ago; stream created before that", rec.Status, roundAge(now.Sub(ended)))
			j.Fence = queue.Fence{CreatedBefore: ended, Cut: endedCut}
		} else {
			age := now.Sub(created)
			if age < cfg.Grace {
				j.Verdict, j.Reason = VerdictGrace, fmt.Sprintf("stream created %s ago, after the job ended (%s); grace %s (--reconcile-grace)",
					roundAge(age), rec.Status, cfg.Grace)
				return j
			}
			j.Reason = fmt.Sprintf("stream created %s ago, after the job ended (%s), with no restart since", roundAge(age), rec.Status)
			j.Fence = queue.Fence{CreatedBefore: now.Add(-cfg.Grace), Cut: "the grace period's start (--reconcile-grace)"}
		}
		j.Verdict, j.Remove = VerdictClean, true
		if rec.Attempt != nil {
			j.Fence.AttemptKnown, j.Fence.MaxAttempt = true, *rec.Attempt
		}
	}
	return j
}

// LastActivity is the latest of the stream's creation, its last message,
// and its task consumer's creation, last delivery and ack.
func LastActivity(s queue.JobStream, c *jetstream.ConsumerInfo) time.Time {
	last := s.LastActivity()
	if c != nil {
		for _, t := range []*time.Time{c.Delivered.Last, c.AckFloor.Last} {
			if t != nil && t.After(last) {
				last = *t
			}
		}
		if c.Created.After(last) {
			last = c.Created
		}
	}
	return last
}

// activity says why a job's queue is active since cut, or "" when idle.
func activity(s queue.JobStream, c *jetstream.ConsumerInfo, now, cut time.Time) string {
	if last := s.LastActivity(); last.After(cut) {
		return "stream created or written " + roundAge(now.Sub(last)) + " ago"
	}
	if c != nil {
		return queue.ConsumerActivity(c, cut)
	}
	return ""
}

// stampedLater reports a stamped attempt on the stream that is later than
// the record's terminal attempt.
func stampedLater(s queue.JobStream, rec queue.Record) (int64, bool) {
	raw, ok := s.Info.Config.Metadata[queue.AttemptMetadataKey]
	if !ok || rec.Attempt == nil {
		return 0, false
	}
	a, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || a <= *rec.Attempt {
		return 0, false
	}
	return a, true
}

func roundAge(d time.Duration) string {
	switch {
	case d >= time.Hour:
		return d.Round(time.Minute).String()
	case d >= time.Minute:
		return d.Round(time.Second).String()
	}
	return d.Round(100 * time.Millisecond).String()
}
