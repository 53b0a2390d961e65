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
	// ClockSkew is the allowance between event times and server times.
	ClockSkew time.Duration
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
// the job's task consumer, nil when missing or not looked up.
func Judge(s queue.JobStream, consumer *jetstream.ConsumerInfo, rec queue.Record, exists bool, now time.Time, cfg SweepConfig) Judgement {
	state := JobStateOf(rec, exists)
	j := Judgement{JobState: state, Verdict: VerdictKeep}
	if rec.Lease != nil && now.Before(rec.Lease.Until) {
		j.Verdict, j.Reason = VerdictBusy, "replica "+rec.Lease.Owner+" is acting on it"
		return j
	}
	created := s.Info.Created
	switch state {
	case JobStateLive:
		j.Reason = fmt.Sprintf("job is %s (last event %s)", rec.State, rec.Status)
	case JobStateUnknown:
		idle := now.Sub(LastActivity(s, consumer))
		if idle < cfg.OrphanIdle {
			j.Reason = fmt.Sprintf("unknown job, active %s ago", roundAge(idle))
			return j
		}
		j.Verdict, j.Remove = VerdictOrphan, cfg.SweepOrphans
		j.Reason = fmt.Sprintf("unknown job, idle for %s", roundAge(idle))
		j.Fence = queue.Fence{CreatedBefore: now.Add(-cfg.OrphanIdle)}
	case JobStateTerminal:
		if later, ok := stampedLater(s, rec); ok {
			j.Reason = fmt.Sprintf("stream belongs to attempt %d, after the terminal attempt", later)
			return j
		}
		since := now.Sub(rec.Time)
		switch {
		case since < cfg.Grace:
			j.Verdict, j.Reason = VerdictGrace, fmt.Sprintf("job ended %s ago, grace %s", roundAge(since), cfg.Grace)
			return j
		case created.Before(rec.Time.Add(-cfg.ClockSkew)):
			j.Reason = "job ended " + roundAge(since) + " ago; stream older than its terminal event"
		case now.Sub(created) < cfg.Grace:
			j.Verdict, j.Reason = VerdictGrace, fmt.Sprintf("created %s ago, after the job ended; grace %s", roundAge(now.Sub(created)), cfg.Grace)
			return j
		default:
			j.Reason = "created after the job ended, with no restart since"
		}
		j.Verdict, j.Remove = VerdictClean, true
		j.Fence = queue.Fence{CreatedBefore: now.Add(-cfg.Grace)}
		if rec.Attempt != nil {
			j.Fence.AttemptKnown, j.Fence.MaxAttempt = true, *rec.Attempt
		}
	}
	return j
}

// LastActivity is the latest of the stream's creation, its last message,
// and its task consumer's last delivery and ack.
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
