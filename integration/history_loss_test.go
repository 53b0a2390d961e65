package integration

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/queue"
)

// Losses of the service's own state in the history test.
//
// A history with a loss plays on a group whose replicas run without
// --trust-new-bucket. At a random step of one of its jobs' lives it deletes
// the service's key-value bucket, as an operator or the backend's
// `chaos_monkey flush nats` would; the service recreates it, waits one
// lease before any claim acts in it (a claim held in the deleted bucket may
// still be acting), and rebuilds the records from the event stream first.
// Every history playing on the group at that moment lives through the loss,
// at whatever point of its own life it was. Losses are at least lossGap
// apart, so that the group gets work done between quarantines, except that
// now and then a second loss comes within the quarantine of the first (the
// records being rebuilt, claims waiting).
//
// A few of those histories delete the event stream JOB_EVENTS too, with
// the bucket, as `flush nats` does (it deletes every stream). Events not yet
// handled are then lost: the service never hears of them. What the checks
// expect then:
//
//   - Safety, for every job whose streams are stamped with the attempt,
//     exactly as without losses: each deletion authorized by an event
//     published before it. The fence judges a stamped stream by its
//     attempt, whatever the records know.
//   - A job whose streams are not stamped relies on its record to know
//     what came after an event: that an event published late (an outbox
//     that lags) is older than the run now going, and, for the reconciler,
//     that no restart came after the job's last terminal event. The
//     records rebuilt after the loss come from the new event stream, which
//     lacks every event published before it; and an event the service had
//     received but not yet handled when the stream went (parked, or held
//     by a frozen replica) is still handled afterwards, against those
//     records. A later run's queue can then be removed (a late terminal
//     event of an earlier run; the reconciler cleaning a queue "created
//     after the job ended, with no restart since"). That is outside the
//     promise (issue 23: "no unsafe deletion of a later run for jobs with
//     stamped streams"), so after an event-stream loss the checks let such
//     a deletion of an unstamped job pass, and log and count it ("outside
//     the promise"). Before the first event-stream loss of the group, and
//     in groups without one, every job is held to the full property.
//   - Liveness: a job whose last event is terminal keeps its queue if that
//     event (every copy of it) may have gone with the event stream before
//     it was handled: published to the deleted stream after the service's
//     consumer's ack floor (read just before the deletion), or while the
//     deletion was under way. A restart request is never left unanswered:
//     the backend asks again (as its Start path does after an unanswered
//     try) when the event stream was deleted since it asked.

// historyBucket is the service's key-value bucket (serve's default).
const historyBucket = "queue_janitor_jobs"

// lossGap is the least time between two bucket losses of a group (but see
// lose).
const lossGap = 2 * historyLease

// lossState is a group's record of what it lost.
type lossState struct {
	js jetstream.JetStream
	// gen is the event stream's generation: 2k while its k-th incarnation
	// lives, 2k+1 while that one is being deleted.
	gen atomic.Uint64

	mu      sync.Mutex
	last    time.Time // the last bucket loss
	doubled bool      // the last loss came within the quarantine of the one before
	// flushWanted: a flush was asked for within lossGap of the last loss;
	// the next loss is one.
	flushWanted bool
	losses      []loss
	// floors maps the generation of each deleted event stream to its
	// service consumer's ack floor read just before the deletion.
	floors map[uint64]uint64
}

// loss is one deletion of the bucket, or of the bucket and the event stream.
type loss struct {
	at     time.Time
	by     string    // the history whose step it came at
	bucket bool      // the bucket was there and was deleted
	flush  bool      // the event stream was deleted first
	double bool      // within the quarantine of the loss before
	done   time.Time // when the last deletion returned
}

func (l loss) String() string {
	var what []string
	if l.flush {
		what = append(what, "event stream JOB_EVENTS")
	}
	if l.bucket {
		what = append(what, "key-value bucket")
	}
	s := fmt.Sprintf("lost at %s-%s: %s (at a step of history %s)", l.at.Format("15:04:05.000000"), l.done.Format("15:04:05.000000"),
		strings.Join(what, " and "), l.by)
	if l.double {
		s += ", within the quarantine of the loss before"
	}
	return s
}

// newLossState creates the bucket as the service would, before its replicas
// start, so that its first quarantine runs while the group sets up.
func newLossState(t *testing.T, js jetstream.JetStream) *lossState {
	t.Helper()
	if _, err := queue.OpenStore(t.Context(), js, queue.StoreConfig{Bucket: historyBucket, Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	return &lossState{js: js, floors: map[uint64]uint64{}}
}

// generation is the event stream's generation (0 for a group without
// losses).
func (l *lossState) generation() uint64 {
	if l == nil {
		return 0
	}
	return l.gen.Load()
}

// lose deletes the group's bucket (and, for a flush, the event stream
// first) at h's planned step of j's life, unless the last loss was less
// than lossGap ago (a flush asked for then comes with the next loss); a
// bucket loss within the quarantine of the last one comes one time in
// three (once per quarantine).
func (g *historyGroup) lose(h *history, j *jobPlan) {
	l := g.loss
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	since := time.Since(l.last)
	double := false
	switch {
	case l.last.IsZero() || since >= lossGap:
	case since < historyLease && !l.doubled && !j.lossFlush && j.rng.IntN(3) == 0:
		double = true
	default:
		g.stats.lossesThrottled.Add(1)
		l.flushWanted = l.flushWanted || j.lossFlush
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	flush := j.lossFlush || l.flushWanted && !double
	x := loss{at: time.Now(), by: h.name, flush: flush, double: double}
	if flush {
		l.flushWanted = false
		l.deleteEventStream(ctx, g)
		g.stats.flushes.Add(1)
	}
	err := g.js.DeleteKeyValue(ctx, historyBucket)
	switch {
	case err == nil:
		x.bucket = true
		l.last, l.doubled = x.at, double
		g.stats.bucketLosses.Add(1)
		if double {
			g.stats.doubleLosses.Add(1)
		}
	case errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound):
		// Not recreated yet since the loss before.
	default:
		g.t.Errorf("delete the bucket: %v", err)
	}
	x.done = time.Now()
	if x.bucket || x.flush {
		l.losses = append(l.losses, x)
	}
}

// deleteEventStream deletes JOB_EVENTS, having read its service consumer's
// ack floor (every event at or below it was handled). The service recreates
// stream and consumer.
func (l *lossState) deleteEventStream(ctx context.Context, g *historyGroup) {
	before := l.gen.Add(1) - 1
	var floor uint64
	if c, err := g.js.Consumer(ctx, "JOB_EVENTS", "queue-janitor"); err == nil {
		floor = c.CachedInfo().AckFloor.Stream
	}
	if err := g.js.DeleteStream(ctx, "JOB_EVENTS"); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		g.t.Errorf("delete the event stream: %v", err)
	}
	l.floors[before] = floor
	l.gen.Add(1)
}

// possiblyLost reports whether p may have gone with a deleted event stream
// before the service handled it.
func (l *lossState) possiblyLost(p published) bool {
	if l == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.gen1 != p.gen2 || p.gen1%2 == 1 {
		return true // published while the stream was being deleted
	}
	floor, deleted := l.floors[p.gen1]
	return deleted && p.seq > floor
}

// endLost reports whether every publication of run's terminal event may
// have been lost with the event stream.
func (l *lossState) endLost(j *jobPlan, run int) bool {
	if l == nil {
		return false
	}
	j.mu.Lock()
	ends := slices.DeleteFunc(slices.Clone(j.published), func(p published) bool {
		return p.restart || p.run != run || !isTerminal(p.status)
	})
	j.mu.Unlock()
	if len(ends) == 0 {
		return false
	}
	for _, p := range ends {
		if !l.possiblyLost(p) {
			return false
		}
	}
	return true
}

// outsidePromise says why a deletion at d of j's later run is outside the
// safety promise ("" when it is not): j's streams are not stamped, and the
// event stream was deleted with the bucket before d.
func (l *lossState) outsidePromise(j *jobPlan, d time.Time) string {
	if l == nil || j.stamp {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range l.losses {
		if x.flush && x.at.Before(d) {
			return fmt.Sprintf("the job's streams are not stamped, and the event stream was deleted with the bucket at %s: "+
				"the records rebuilt since do not know the events published before", x.at.Format("15:04:05.000000"))
		}
	}
	return ""
}

// lossesBetween lists the group's losses from from to to.
func (g *historyGroup) lossesBetween(from, to time.Time) []loss {
	if g.loss == nil {
		return nil
	}
	g.loss.mu.Lock()
	defer g.loss.mu.Unlock()
	var out []loss
	for _, x := range g.loss.losses {
		if !x.at.Before(from) && !x.at.After(to) {
			out = append(out, x)
		}
	}
	return out
}

// account counts what h lived through.
func (g *historyGroup) account(h *history) {
	if g.loss == nil {
		return
	}
	g.stats.lossHistories.Add(1)
	var bucket, flush bool
	for _, x := range g.lossesBetween(h.start, h.end) {
		bucket = bucket || x.bucket
		flush = flush || x.flush
	}
	if bucket {
		g.stats.throughLoss.Add(1)
	}
	if flush {
		g.stats.throughFlush.Add(1)
	}
	for _, j := range h.jobs {
		j.mu.Lock()
		ps := slices.Clone(j.published)
		j.mu.Unlock()
		for _, p := range ps {
			if g.loss.possiblyLost(p) {
				g.stats.eventsLost.Add(1)
			}
		}
	}
}

// historyStats counts the faults the histories met, for the run's summary.
type historyStats struct {
	bucketLosses, doubleLosses, lossesThrottled, flushes atomic.Int64
	lossHistories, throughLoss, throughFlush             atomic.Int64
	pendings, startedEarly, startRightAfterTerminal      atomic.Int64
	reasks, staleEarlierTry                              atomic.Int64
	publishRetries, provisionRetries                     atomic.Int64
	eventsLost, endLost, outsidePromise                  atomic.Int64

	mu       sync.Mutex
	outcomes map[string]int
}

func (s *historyStats) outcome(o string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.outcomes == nil {
		s.outcomes = map[string]int{}
	}
	s.outcomes[o]++
}

func (s *historyStats) String() string {
	s.mu.Lock()
	var answers []string
	for _, o := range slices.Sorted(maps.Keys(s.outcomes)) {
		answers = append(answers, fmt.Sprintf("%s %d", o, s.outcomes[o]))
	}
	s.mu.Unlock()
	return fmt.Sprintf("bucket losses %d (%d within a quarantine; %d more asked for within %s of one), event stream losses %d; "+
		"histories on bucket-loss groups %d, living through a bucket loss %d, through an event stream loss %d; "+
		"events possibly lost %d, jobs whose last terminal event was lost %d, deletions outside the promise %d; "+
		"PENDING between restart and answer (or before the first run) %d, STARTED right after the answer %d, "+
		"restarts right after a terminal event %d; restarts asked again %d (stale answers to an earlier try %d), publications retried %d, provisions retried %d; "+
		"flushed answers: %s",
		s.bucketLosses.Load(), s.doubleLosses.Load(), s.lossesThrottled.Load(), lossGap, s.flushes.Load(),
		s.lossHistories.Load(), s.throughLoss.Load(), s.throughFlush.Load(),
		s.eventsLost.Load(), s.endLost.Load(), s.outsidePromise.Load(),
		s.pendings.Load(), s.startedEarly.Load(), s.startRightAfterTerminal.Load(),
		s.reasks.Load(), s.staleEarlierTry.Load(), s.publishRetries.Load(), s.provisionRetries.Load(), strings.Join(answers, ", "))
}
