package modelcheck

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Config is one scenario of the model and the bounds of its exploration.
type Config struct {
	// Name names the configuration in reports.
	Name string
	// Attempts: the backend sends attempt in its events. Stamps: it
	// stamps job_attempt on the streams and consumers it creates.
	Attempts, Stamps bool
	// Run2Started: the backend publishes run 2's started event (only
	// recorded). Run2Terminal: it ends run 2 with a terminal event too.
	Run2Started, Run2Terminal bool
	// ReplicaOffsets are the clock offsets of replicas A and B (the
	// reconciler runs with A's).
	ReplicaOffsets [2]time.Duration
	// BackendOffset is the producer's clock offset (its event times).
	BackendOffset time.Duration

	// MaxSteps bounds the length of an explored history; MaxTime the
	// server clock (whole seconds).
	MaxSteps, MaxTime int
	// MaxFaults bounds lost replies, dropped, delayed or cut requests, lost
	// answers and lost acks in one history; MaxCrashes crashes; MaxRenewals
	// lease renewals; MaxDuplicates duplicate publications; MaxPasses
	// reconciler passes; MaxReasks the backend's repeated restart requests.
	MaxFaults, MaxCrashes, MaxRenewals, MaxDuplicates, MaxPasses, MaxReasks int

	// MaxLosses bounds the fault "the bucket is lost" (world.lose): every
	// record and lease vanishes and the store goes on with an empty bucket,
	// its revisions starting again at 1. RecordExpiry makes the fault job
	// 7's record expiring instead (revisions go on; only when no lease in it
	// runs).
	MaxLosses    int
	RecordExpiry bool
	// PendingBetween: the backend may publish the next run's pending status
	// (with the new attempt) between its restart request and the answer.
	PendingBetween bool
	// RestartedBefore: run 1 began with a restart request (e0, for run 1)
	// that replica A flushed (nothing there) and answered a minute before
	// the model begins, so job 7's record says its queue was removed
	// recently (CleanedAt): its removals in the model empty a stream that
	// holds tasks before deleting it (queue.Fence.PurgeFirst), as they do
	// within 15 minutes of the last one. Otherwise no removal in the model
	// purges: the first is the job's first.
	RestartedBefore bool
	// MaxPauses bounds pauses: after the reply to one of an effect's
	// requests, its replica stands still before its next authority check
	// (between the fence's read and the delete, between the purge and the
	// delete, before a retry) while other steps, ticks included, run.
	// PauseAfterFailureOnly allows them only after a request that failed
	// (the retry's backoff and reconnection).
	MaxPauses             int
	PauseAfterFailureOnly bool
	// PauseAfterPurgeOnly allows them only after a purge's reply (between
	// the purge and the stream's delete).
	PauseAfterPurgeOnly bool
	// TrustNewBucket runs the replicas as --trust-new-bucket does: no
	// quarantine of a new bucket (handlers.Config.Quarantine 0).
	TrustNewBucket bool
	// Prompt: an effect's request reaches the server before any other step
	// (no other replica, backend step or tick while one is in flight);
	// only a pause or a fault opens a gap within an effect.
	Prompt bool
	// DropStreamDeleteOnly: the only fault is a dropped stream delete.
	DropStreamDeleteOnly bool
	// ReaskAfter: the backend asks again only once that many seconds of
	// server time passed since its last request (0: at any time). Its
	// timeout (30 s by default) is longer than the lease (12 s).
	ReaskAfter int
	// MaxStates stops the exploration after that many states (0: no
	// limit); the result then says it was cut short.
	MaxStates int
	// DeepenFrom, when set, explores by iterative deepening: every history
	// with up to DeepenFrom choice points (steps taken where more than one
	// step was enabled; a forced step is free), then DeepenBy more, and so
	// on up to MaxSteps, MaxStates bounding the states of all rounds
	// together. A depth-first search cut short by MaxStates has explored
	// only the histories that begin with its first choices; a round that
	// completes has explored every history of its length (each then runs on
	// in the fair completion), so a short counterexample is found wherever
	// it branches off. Result.CompleteDepth says how deep the search was
	// complete.
	DeepenFrom, DeepenBy int
	// Mutation weakens one guard in the model.
	Mutation Mutation
	// StopAtFirst stops at the first violation instead of searching on for
	// a shorter one.
	StopAtFirst bool
	// SafetyOnly ignores liveness violations, so that a longer safety
	// counterexample is not hidden by a shorter liveness one.
	SafetyOnly bool
	// StaleIsLiveness adds to liveness: the backend's restart request is not
	// answered stale unless a request for a later run superseded it (the
	// backend gives up on a stale answer and never starts the run). Issue
	// #23's scenarios check it; -modelcheck.issue23 turns it on everywhere.
	StaleIsLiveness bool
	// Measure explores on past violations without recording them: the size
	// of the state space the bounds give, as a fixed code would meet it.
	Measure bool
	// Prefix starts the exploration from the state a history reaches: its
	// steps written as for Script (the first enabled step whose description
	// contains each), taken before the explored ones (and not counted).
	Prefix []string
	// KnownBug marks a scenario in which the model finds a product bug that
	// is reported and not fixed yet: the property broken must contain it.
	// The test then expects that counterexample (and fails once it is no
	// longer found, so that the mark goes with the fix).
	KnownBug string
}

// Result is what an exploration found.
type Result struct {
	Config     Config
	States     int // distinct states visited
	Executions int // executions started from the initial state (replays)
	Steps      int // steps run, replays included
	Leaves     int // complete executions checked for liveness
	Took       time.Duration
	Truncated  bool // MaxStates reached
	// CompleteDepth is the bound within which every history was explored
	// (0: none): explored steps, or with iterative deepening
	// (Config.DeepenFrom) choice points; Rounds the rounds of iterative
	// deepening, CutAt the bound of a round cut short.
	CompleteDepth, Rounds, CutAt int
	// RoundStates are the states each round explored.
	RoundStates []int
	// bounded: the round's choice bound cut some history short.
	bounded bool
	// Violation is the shortest counterexample found, nil when none.
	Violation *Counterexample
	// FirstAfter is how long the first counterexample took to find, and
	// FirstSteps its length in explored steps, FirstStates the states
	// visited until then.
	FirstAfter  time.Duration
	FirstSteps  int
	FirstStates int
}

// Counterexample is a history that breaks a property.
type Counterexample struct {
	Property string
	Choices  []int
	History  []string
	// ChoicePoints counts the steps taken where more than one was enabled
	// (what iterative deepening bounds).
	ChoicePoints int
}

// String prints the numbered history and the choices that replay it.
func (c *Counterexample) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "property broken: %s\n", c.Property)
	for i, h := range c.History {
		fmt.Fprintf(&b, "%3d. %s\n", i+1, h)
	}
	fmt.Fprintf(&b, "(%d explored steps, %d of them choice points)\n", len(c.Choices), c.ChoicePoints)
	fmt.Fprintf(&b, "replay: -modelcheck.replay=%s", joinInts(c.Choices))
	return b.String()
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}

// Explore checks cfg exhaustively: every interleaving of the enabled steps
// up to the bounds, depth first, re-executing the real handler code from
// the initial state for each branch (stateless search) and pruning states
// already explored at no greater depth; with Config.DeepenFrom, by
// iterative deepening. settle must return once every goroutine started by
// the model waits (testing/synctest's Wait); Explore must run inside a
// synctest bubble. clock is a real clock (time.Now is the bubble's fake
// one), for the times reported.
func Explore(cfg Config, settle func(), clock func() time.Time) Result {
	if cfg.MaxSteps > math.MaxInt16 {
		panic(fmt.Sprintf("modelcheck: %s: MaxSteps %d is over %d (the visited set keeps depths in 16 bits)", cfg.Name, cfg.MaxSteps, math.MaxInt16))
	}
	if cfg.DeepenFrom <= 0 || cfg.DeepenFrom >= cfg.MaxSteps {
		res := explore(cfg, 0, settle, clock)
		if !res.Truncated && res.Violation == nil {
			res.CompleteDepth = cfg.MaxSteps
		}
		return res
	}
	start := clock()
	step := max(cfg.DeepenBy, 1)
	var total Result
	for d := cfg.DeepenFrom; ; d = min(d+step, cfg.MaxSteps) {
		round := cfg
		if cfg.MaxStates > 0 {
			round.MaxStates = cfg.MaxStates - total.States
		}
		res := explore(round, d, settle, clock)
		res.Config = cfg
		res.RoundStates = append(total.RoundStates, res.States)
		res.States += total.States
		res.Executions += total.Executions
		res.Steps += total.Steps
		res.Leaves += total.Leaves
		res.Rounds = total.Rounds + 1
		res.CompleteDepth = total.CompleteDepth
		if res.Violation != nil {
			res.FirstAfter += total.Took
			res.FirstStates += total.States
		}
		res.Took = clock().Sub(start)
		total = res
		switch {
		case res.Violation != nil:
			return total
		case res.Truncated:
			total.CutAt = d
			return total
		}
		total.CompleteDepth = d
		if !res.bounded {
			// No history reached the bound: every history is explored.
			total.CompleteDepth = cfg.MaxSteps
			return total
		}
		if d == cfg.MaxSteps || cfg.MaxStates > 0 && total.States >= cfg.MaxStates {
			return total
		}
	}
}

// explore is one depth-first search of cfg up to its bounds: histories of
// up to cfg.MaxSteps explored steps and, when choices > 0, up to that many
// choice points (steps taken where more than one was enabled; a step that
// was the only one enabled costs none).
func explore(cfg Config, choices int, settle func(), clock func() time.Time) Result {
	start := clock()
	since := func() time.Duration { return clock().Sub(start) }
	res := Result{Config: cfg}
	// visited keeps, for each state, the choice points and steps taken to
	// reach it: a state reached again with no fewer of either is pruned.
	type seen struct{ choices, steps int16 }
	visited := map[[16]byte]seen{}
	type frame struct{ n, i int }
	var frames []frame
	var path []int
	chosen := 0 // frames with more than one step
	x := newExecAt(cfg, settle)
	x.quiet = true
	res.Executions++
	maxSteps := cfg.MaxSteps
	for {
		leaf := false
		depth := len(path)
		if cfg.Measure {
			x.violated = ""
		}
		if x.violated != "" {
			if res.record(settle, path, x.violated, since) {
				maxSteps = len(path) - 1
			}
			leaf = true
		} else if h := x.hash(); func() bool {
			v, ok := visited[h]
			return ok && int(v.choices) <= chosen && int(v.steps) <= depth
		}() {
			leaf = true
		} else {
			visited[h] = seen{int16(chosen), int16(depth)} //nolint:gosec // both at most MaxSteps, checked in Explore
			res.States++
			var steps []step
			if depth < maxSteps {
				steps = x.enabled(true)
				if len(steps) > 1 && choices > 0 && chosen >= choices {
					steps = nil // at the bound: the fair completion takes over
					res.bounded = true
				}
			}
			if len(steps) == 0 {
				res.Leaves++
				why := x.complete()
				if cfg.SafetyOnly && strings.HasPrefix(why, "LIVENESS") || cfg.Measure {
					why = ""
				}
				if why != "" && res.record(settle, path, why, since) {
					maxSteps = depth - 1
				}
				leaf = true
			} else {
				frames = append(frames, frame{n: len(steps)})
				if len(steps) > 1 {
					chosen++
				}
				path = append(path, 0)
				x.apply(steps[0])
				res.Steps++
			}
		}
		if res.Violation != nil && cfg.StopAtFirst || cfg.MaxStates > 0 && res.States >= cfg.MaxStates {
			res.Truncated = res.Violation == nil || !cfg.StopAtFirst
			x.close()
			break
		}
		if !leaf {
			continue
		}
		x.close()
		// Backtrack to the deepest choice with an untried sibling.
		for len(frames) > 0 && (frames[len(frames)-1].i+1 >= frames[len(frames)-1].n || len(frames) > maxSteps) {
			frames = frames[:len(frames)-1]
		}
		if len(frames) == 0 {
			break
		}
		frames[len(frames)-1].i++
		path = path[:len(frames)]
		path[len(path)-1] = frames[len(frames)-1].i
		chosen = 0
		for _, f := range frames {
			if f.n > 1 {
				chosen++
			}
		}
		x = newExecAt(cfg, settle)
		x.quiet = true
		res.Executions++
		for _, c := range path {
			x.apply(x.enabled(true)[c])
			res.Steps++
		}
	}
	res.Took = since()
	return res
}

// record keeps a counterexample if it is the first or shorter; it reports
// whether it did.
func (r *Result) record(settle func(), path []int, why string, since func() time.Duration) bool {
	if r.Violation == nil {
		r.FirstAfter = since()
		r.FirstSteps, r.FirstStates = len(path), r.States
	} else if len(r.Violation.Choices) <= len(path) {
		return false
	}
	ce, err := Replay(r.Config, settle, append([]int(nil), path...))
	if err != nil || ce.Property != why {
		// Replaying must give the same history: the model is deterministic.
		ce = &Counterexample{Property: fmt.Sprintf("%s (REPLAY DIVERGED: %v, %q)", why, err, ce), Choices: path}
	}
	r.Violation = ce
	return true
}

// Replay runs one history given by its choices and returns it, with the
// violation it shows, if any.
func Replay(cfg Config, settle func(), choices []int) (*Counterexample, error) {
	x := newExecAt(cfg, settle)
	defer x.close()
	points := 0
	for i, c := range choices {
		steps := x.enabled(true)
		if c < 0 || c >= len(steps) {
			return nil, fmt.Errorf("choice %d at step %d: only %d steps are enabled", c, i+1, len(steps))
		}
		if len(steps) > 1 {
			points++
		}
		x.apply(steps[c])
	}
	why := x.violated
	if why == "" {
		why = x.complete()
	}
	return &Counterexample{Property: why, Choices: choices, History: x.history, ChoicePoints: points}, nil
}

// complete runs the execution on without faults under a fair scheduler
// (every request served, every event delivered, time advancing, the
// reconciler passing) until nothing is left to do, and checks liveness.
// It returns "" when the job ends as it must.
func (x *exec) complete() string {
	const limit = 400
	x.history = append(x.history, "— no more faults from here: the fair completion runs —")
	idle, passLine, passDeleted := 0, -1, 0
	for range limit {
		if x.violated != "" {
			return x.violated
		}
		steps := x.enabled(false)
		var next *step
		for i := range steps {
			s := steps[i]
			if s.kind == sTimeout {
				continue // no more faults: held requests leave
			}
			if s.kind == sDeliver && x.failed {
				continue // tick first: the lease in the way must run out
			}
			next = &s
			break
		}
		if next != nil {
			x.apply(*next)
			idle = 0
			continue
		}
		busy := false
		for _, a := range x.actors {
			busy = busy || a.task != nil
		}
		if !busy && x.back.waiting() && x.pendingEvents() == 0 && x.back.tries < 3 {
			x.apply(step{kind: sReask})
			continue
		}
		if busy || x.pendingEvents() > 0 || idle < int((Lease+Grace)/time.Second)+1 {
			x.failed = false
			x.apply(step{kind: sTick})
			idle++
			continue
		}
		if passLine >= 0 && len(x.w.Deleted) == passDeleted && x.activity == passLine {
			return x.liveness()
		}
		passLine, passDeleted = x.activity, len(x.w.Deleted)
		x.apply(step{kind: sPass, a: x.actors[2]})
		idle = 0
	}
	return fmt.Sprintf("LIVENESS: no quiescence within %d steps of the fair completion", limit)
}

// supersededRestart reports whether a restart request for a run after the
// one the backend waited for was published: only then may its own request
// be answered stale.
func (x *exec) supersededRestart() bool {
	for _, e := range x.w.Events {
		if e.restart() && e.Run > x.back.run+1 {
			return true
		}
	}
	return false
}

func (x *exec) pendingEvents() int {
	n := 0
	for _, e := range x.w.Events {
		if e.State != evAcked {
			n++
		}
	}
	return n
}

// liveness checks the end state: a terminal job has no queue left, the
// backend got its answer.
func (x *exec) liveness() string {
	if x.back.waiting() {
		return "LIVENESS: the restart request was never answered (the backend gave up after 3 tries)"
	}
	if x.cfg.StaleIsLiveness && x.back.gaveUp != "" && !x.supersededRestart() {
		return fmt.Sprintf("LIVENESS: the restart request for run %d was answered stale, though no later request superseded it: the backend never starts the run",
			x.back.run+1)
	}
	var last *modelEvent
	for _, e := range x.w.Events {
		if e.Copy == 0 && (e.terminal() || e.restart()) {
			last = e
		}
	}
	if last != nil && last.terminal() && x.back.done() {
		for _, k := range []string{streamKey(names.StreamName(job)), consumerKey(names.AdvisoryStream, names.DeadLetterConsumerName(job))} {
			if r, ok := x.w.Resources[k]; ok {
				return fmt.Sprintf("LIVENESS: job 7 ended (%s) but %s is still there", last.label(), r.describe())
			}
		}
	}
	return ""
}
