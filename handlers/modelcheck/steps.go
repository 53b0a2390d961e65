package modelcheck

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
)

// stepKind is what a step of the model does.
type stepKind int

const (
	sServe     stepKind = iota // the server answers a request (possibly with a fault)
	sRelease                   // a buffered request leaves the client and is applied
	sTimeout                   // a buffered request times out at its caller
	sDeliver                   // the event stream delivers an event to a replica
	sBackend                   // the backend's next script step
	sReask                     // the backend times out and asks again
	sDuplicate                 // the backend's outbox publishes an event twice
	sRedeliver                 // an ack was lost: the event is delivered again
	sCrash                     // a replica (or the reconciler) crashes
	sRenew                     // a claim's renewal runs
	sPass                      // the reconciler starts a pass
	sTick                      // the clock advances by one second
	sLose                      // the bucket is lost (or job 7's record expires)
	sResume                    // a paused replica goes on
	sRebuild                   // the rebuild loop runs (handlers.Rebuilder.Ensure)
)

// step is one choice at a state.
type step struct {
	kind  stepKind
	c     *call
	fault fault
	ev    *modelEvent
	a     *actor
	// pause: the request is served, and its task then stands still before
	// its next authority check (Config.MaxPauses).
	pause bool
}

// enabled lists the steps possible at the current state, in a stable
// order. explore bounds time, faults, crashes and the like.
func (x *exec) enabled(explore bool) []step {
	var out []step
	faults := explore && x.usedF < x.cfg.MaxFaults
	pauses := explore && x.usedZ < x.cfg.MaxPauses
	pend := x.sortedPending()
	prompt := false
	if x.cfg.Prompt {
		// An effect's request reaches the server before anything else
		// happens: only such requests are served until none is in flight.
		var urgent []*call
		for _, c := range pend {
			if c.op.effect() && !c.buffered && !c.ghost && !c.renew && !x.blocked(c) {
				urgent = append(urgent, c)
			}
		}
		if len(urgent) > 0 {
			pend, prompt = urgent, true
		}
	}
	resumed := map[*task]bool{}
	for _, c := range pend {
		switch {
		case c.op == opResume:
			if !resumed[c.t] {
				resumed[c.t] = true
				out = append(out, step{kind: sResume, a: c.t.a})
			}
			continue
		case c.renew:
			continue // served within the renewal's step
		case x.blocked(c):
			// Behind a held request of its connection: it may only time
			// out (its caller gives up) until that one leaves.
			if !c.ghost {
				out = append(out, step{kind: sTimeout, c: c})
			}
			continue
		case c.ghost:
			out = append(out, step{kind: sRelease, c: c})
			continue
		case c.buffered:
			out = append(out, step{kind: sRelease, c: c}, step{kind: sTimeout, c: c})
			continue
		}
		// A pause may follow the reply of an effect's request, before the
		// next authority check of its claim.
		pausable := pauses && c.op.effect() && c.t.claim != nil && (!x.cfg.PauseAfterPurgeOnly || c.op == opPurge)
		out = append(out, step{kind: sServe, c: c})
		if pausable && !x.cfg.PauseAfterFailureOnly {
			out = append(out, step{kind: sServe, c: c, pause: true})
		}
		if !faults {
			continue
		}
		var fs []fault
		switch {
		case x.cfg.DropStreamDeleteOnly:
			if c.op == opDeleteStream {
				fs = []fault{faultDrop}
			}
		case c.op == opDeleteStream || c.op == opDeleteConsumer || c.op == opPurge:
			fs = []fault{faultLostReply, faultDrop, faultDelay}
		case c.op == opPut:
			fs = []fault{faultLostReply, faultDrop}
		case c.op == opEmit:
			fs = []fault{faultLostReply}
		}
		for _, f := range fs {
			out = append(out, step{kind: sServe, c: c, fault: f})
			if pausable && f != faultDelay {
				out = append(out, step{kind: sServe, c: c, fault: f, pause: true})
			}
		}
	}
	if prompt {
		// A crash is the replica's own event: it may come mid-effect.
		for _, a := range x.actors {
			if a.task != nil && explore && x.usedC < x.cfg.MaxCrashes {
				out = append(out, step{kind: sCrash, a: a})
			}
		}
		return out
	}
	for _, e := range x.w.Events {
		if e.State != evPending {
			continue
		}
		for _, a := range x.actors[:2] {
			if a.task == nil {
				out = append(out, step{kind: sDeliver, ev: e, a: a})
			}
		}
	}
	if x.backendEnabled() {
		out = append(out, step{kind: sBackend})
	}
	if q := x.rebuilder(); q != nil && q.task == nil && x.rebuildDue() {
		out = append(out, step{kind: sRebuild, a: q})
	}
	if !explore {
		return out
	}
	if x.back.waiting() && x.back.tries < 1+x.cfg.MaxReasks &&
		(x.cfg.ReaskAfter == 0 || !x.w.Now.time().Before(x.back.lastAt.time().Add(time.Duration(x.cfg.ReaskAfter)*time.Second))) {
		out = append(out, step{kind: sReask})
	}
	if x.usedL < x.cfg.MaxLosses && x.mayLose() {
		out = append(out, step{kind: sLose})
	}
	if x.usedD < x.cfg.MaxDuplicates {
		for _, e := range x.w.Events {
			if e.Copy == 0 {
				out = append(out, step{kind: sDuplicate, ev: e})
			}
		}
	}
	if faults {
		for _, e := range x.w.Events {
			if e.State == evAcked {
				out = append(out, step{kind: sRedeliver, ev: e})
			}
		}
	}
	for _, a := range x.actors {
		t := a.task
		if t == nil {
			continue
		}
		if x.usedC < x.cfg.MaxCrashes {
			out = append(out, step{kind: sCrash, a: a})
		}
		if !a.rebuilds && x.usedR < x.cfg.MaxRenewals && x.inEffect(t) {
			out = append(out, step{kind: sRenew, a: a})
		}
	}
	if r := x.actors[2]; r.task == nil && x.usedP < x.cfg.MaxPasses {
		out = append(out, step{kind: sPass, a: r})
	}
	if next, ok := x.nextThreshold(); ok && stampOf(next).S <= x.cfg.MaxTime && x.tickAllowed() {
		out = append(out, step{kind: sTick})
	}
	return out
}

// inEffect reports whether t holds a claim and waits on one of the
// janitor's requests: the moments at which its renewal loop may fire.
func (x *exec) inEffect(t *task) bool {
	if t.claim == nil {
		return false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, c := range x.pending {
		if c.t == t && (c.op.effect() || c.op == opResume) && !c.ghost {
			return true
		}
	}
	return false
}

// mayLose reports whether the loss fault changes anything. A bucket always
// holds something (at least its rebuild marker): it may be lost at any
// time. A record expires (Config.RecordExpiry) only when no lease in it is
// running: its TTL (30 days, when set) is far longer than a lease, and
// every claim writes the record.
func (x *exec) mayLose() bool {
	if !x.cfg.RecordExpiry {
		return true
	}
	r, ok := x.w.Recs[job]
	if !ok {
		return false
	}
	rec := r.Rec
	rec.At = r.At.time()
	return !rec.LeaseLive(x.w.Now.time())
}

// rebuildDue reports whether the rebuild loop has something to do: the
// bucket holds no finished rebuild marker of its own incarnation, and no
// rebuild holds a running lease in it. The loop runs at any moment then (a
// claim's kick, or its five-second ticker).
func (x *exec) rebuildDue() bool {
	m := x.w.Marker
	switch {
	case m == nil:
		return true
	case !m.M.Incarnation.Equal(x.w.Bucket.time()):
		return true
	case m.M.State == queue.RebuildDone:
		return false
	case m.M.State == queue.RebuildRunning:
		return !x.w.Now.time().Before(m.At.time().Add(m.M.TTL))
	}
	return true
}

// tickAllowed is the bound on a request's time in flight: a request of an
// effect, sent before its claim's deadline, reaches the server (or is
// given up) before the clock passes that deadline by a whole tick, the
// margin the handler keeps before its lease ends.
//
// Under MutAuthorityNeverExpires the janitor's check always passes, so a
// request may leave at any time after it (a replica paused between its
// check and its send): no bound.
func (x *exec) tickAllowed() bool {
	if x.cfg.Mutation == MutAuthorityNeverExpires {
		return true
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, c := range x.pending {
		if c.ghost || c.renew || !c.op.effect() || c.t.claim == nil || c.t.crashed {
			continue
		}
		if !x.now(c.t.a).Before(c.t.claim.Deadline()) {
			return false
		}
	}
	return true
}

// nextThreshold is the next instant at which time changes a decision: a
// lease ends (in server time, or by its holder's clock under
// MutLeaseByHolderClock), a claim's deadline passes (by its holder's
// clock), a stream leaves the reconciler's grace period, a new bucket's
// quarantine ends, a rebuild's lease in the marker ends. Between two such
// instants time changes nothing any code decides on (every time stamp only
// moves later together), so the clock jumps from one to the next: one tick
// a step. ok is false when no instant is ahead.
func (x *exec) nextThreshold() (next time.Time, ok bool) {
	now := x.w.Now.time()
	consider := func(t time.Time) {
		if t.After(now) && (!ok || t.Before(next)) {
			next, ok = t, true
		}
	}
	for _, r := range x.w.Recs {
		if l := r.Rec.Lease; l != nil {
			rec := r.Rec
			rec.At = r.At.time()
			consider(rec.LeaseEnds())
			consider(l.Until)
		}
	}
	if x.lossy() {
		// A new bucket's quarantine ends; a rebuild's lease in the marker
		// ends.
		consider(x.w.Bucket.time().Add(Lease))
		if m := x.w.Marker; m != nil && m.M.State == queue.RebuildRunning {
			consider(m.At.time().Add(m.M.TTL))
		}
	}
	x.mu.Lock()
	for _, a := range x.actors {
		if t := a.task; t != nil && t.claim != nil {
			consider(t.claim.Deadline().Add(-a.offset))
		}
	}
	x.mu.Unlock()
	if x.usedP < x.cfg.MaxPasses {
		for _, r := range x.w.Resources {
			if r.Run > 0 {
				consider(r.Created.time().Add(Grace))
			}
		}
	}
	return next, ok
}

// tickTarget is where a tick takes the clock: the next threshold, or a
// second on when none is ahead (the fair completion's idle ticks).
func (x *exec) tickTarget() stamp {
	if next, ok := x.nextThreshold(); ok {
		return stampOf(next)
	}
	return stamp{S: x.w.Now.S + 1, K: x.w.Now.K}
}

// stampOf is the server stamp of a model time.
func stampOf(t time.Time) stamp {
	d := t.Sub(base)
	sec, rem := d/time.Second, d%time.Second
	if rem < 0 {
		sec, rem = sec-1, rem+time.Second // a time before the epoch: whole seconds down, milliseconds up
	}
	return stamp{S: int(sec), K: int(rem / time.Millisecond)}
}

// label is how a step is shown in a history, before it runs.
func (x *exec) label(s step) string {
	switch s.kind {
	case sServe:
		l := ""
		if s.fault != faultNone {
			l = fmt.Sprintf("[%s] ", faultNames[s.fault])
		}
		if s.pause {
			l += "[then PAUSES before its next check] "
		}
		return l
	case sLose:
		return "FAULT: "
	case sDeliver:
		return fmt.Sprintf("event stream: delivers %s to replica %s", s.ev.label(), s.a.name)
	case sDuplicate:
		return ""
	case sRedeliver:
		return fmt.Sprintf("event stream: the ack of %s was lost → redelivered", s.ev.label())
	case sCrash:
		return fmt.Sprintf("CRASH of %s (its lease stays until it expires)", s.a.name)
	case sPass:
		return "reconciler: starts a pass"
	case sRebuild:
		return "rebuild loop: runs (Rebuilder.Ensure)"
	case sTick:
		return fmt.Sprintf("clock: %s → %s", x.w.Now, x.tickTarget())
	}
	return ""
}

// apply runs one step and lets the actors run until they wait again.
func (x *exec) apply(s step) {
	var line string
	if !x.quiet {
		line = x.label(s)
	}
	x.stepNo++
	switch s.kind {
	case sServe:
		if s.pause {
			x.mu.Lock()
			s.c.t.paused = true // before the reply: the task may run on at once
			x.mu.Unlock()
			x.usedZ++
		}
		switch s.fault {
		case faultDelay:
			x.mu.Lock()
			s.c.buffered, s.c.bufferedAt = true, x.stepNo
			x.mu.Unlock()
			x.usedF++
			line += fmt.Sprintf("%s: %s %s held in the client's buffer", x.who(s.c), s.c.op, s.c.target())
		case faultNone:
			line += x.serve(s.c, s.fault)
		default:
			x.usedF++
			line += x.serve(s.c, s.fault)
		}
	case sRelease:
		line = "network: held request leaves → " + x.serve(s.c, faultNone)
	case sTimeout:
		line = x.timeout(s.c)
	case sDeliver:
		s.ev.State, s.ev.Handler = evInFlight, s.a.name
		ev := s.ev.jobStatus()
		h := s.a.h
		x.start(s.a, s.ev, func(ctx context.Context) (events.Outcome, error) { return h.Handle(ctx, ev) })
	case sBackend:
		line = x.backendStep()
	case sReask:
		line = x.reask()
	case sDuplicate:
		x.usedD++
		line = x.duplicate(s.ev)
	case sRedeliver:
		x.usedF++
		s.ev.State = evPending
	case sCrash:
		x.usedC++
		x.crash(s.a)
	case sRenew:
		x.usedR++
		line = x.renew(s.a)
	case sPass:
		x.usedP++
		rc := s.a.rc
		x.start(s.a, nil, func(ctx context.Context) (events.Outcome, error) {
			_, err := rc.Pass(ctx, handlers.PassOptions{})
			return events.Outcome{}, err
		})
	case sTick:
		x.w.Now = x.tickTarget()
	case sLose:
		x.usedL++
		line += x.w.lose(x.cfg.RecordExpiry, x.cfg.Mutation == MutRevisionsRestart)
	case sRebuild:
		rb := s.a.rb
		x.start(s.a, nil, func(ctx context.Context) (events.Outcome, error) { return events.Outcome{}, rb.Ensure(ctx) })
	case sResume:
		line = x.resume(s.a)
	}
	x.history = append(x.history, line)
	if s.kind != sTick && s.kind != sPass && (s.c == nil || !s.c.t.a.reconciler()) {
		x.activity++
	}
	x.quiesce()
}

// crash abandons a's task: its requests fail, its connection goes with
// the requests held in its buffer (unless MutReconnectBuffer keeps them),
// its event is redelivered.
func (x *exec) crash(a *actor) {
	t := a.task
	x.mu.Lock()
	t.crashed = true
	var mine []*call
	for _, c := range x.pending {
		if c.t.a == a && c.conn == a.conn && (!c.ghost || x.cfg.Mutation != MutReconnectBuffer) {
			mine = append(mine, c)
		}
	}
	a.task = nil
	a.conn++
	x.mu.Unlock()
	for _, c := range mine {
		if c.ghost {
			x.remove(c) // its caller is gone already
			continue
		}
		x.failCall(c, errCrashed)
	}
	if t.ev != nil {
		t.ev.State, t.ev.Handler = evPending, ""
	}
}

// timeout is a held request's caller giving up: it gets no reply. The
// request stays where it is, in the client's buffer, and may still leave
// later (until its connection is closed), unless it is read-only: then
// whether it ever leaves makes no difference.
func (x *exec) timeout(c *call) string {
	line := fmt.Sprintf("%s: %s %s times out", x.who(c), c.op, c.target())
	if x.blocked(c) {
		line += " (held behind an earlier request of its connection)"
	}
	if c.op.readOnly() {
		x.failCall(c, errNoReply)
		return line
	}
	x.mu.Lock()
	if !c.buffered {
		c.bufferedAt = c.arrived // held since it was sent: what came after waits behind it
	}
	c.ghost, c.buffered = true, false
	x.mu.Unlock()
	c.t.observe(c, "timeout")
	x.slept = true
	c.reply <- reply{err: errNoReply}
	return line + " (it stays in the client's buffer, in doubt)"
}

// who names the actor of a request.
func (x *exec) who(c *call) string {
	if c.t.a.reconciler() {
		return "reconciler"
	}
	if c.t.a.rebuilds {
		return "rebuild loop"
	}
	return "replica " + c.t.a.name
}

// renew runs the claim's Renew as one step, as the renewal loop would.
func (x *exec) renew(a *actor) string {
	t := a.task
	ctx := context.WithValue(t.context(), renewKey{}, true)
	done := make(chan bool, 1)
	x.wg.Add(1)
	go func() {
		defer x.wg.Done()
		done <- t.claim.Renew(ctx)
	}()
	var lines []string
	for {
		x.settle()
		var next *call
		for _, c := range x.sortedPending() {
			if c.renew && c.t == t {
				next = c
				break
			}
		}
		if next == nil {
			break
		}
		if x.blocked(next) {
			x.failCall(next, errNoReply)
			lines = append(lines, "   renewal held behind an earlier request of its connection: times out")
			continue
		}
		lines = append(lines, "   "+x.serve(next, faultNone))
	}
	held := <-done
	return fmt.Sprintf("replica %s: renews its lease → held=%v, deadline %s\n%s", a.name, held,
		t.claim.Deadline().Sub(base), strings.Join(lines, "\n"))
}

// hash is the state: the world, the backend, the budgets used, and each
// actor's position (what its task has observed and what it waits on).
func (x *exec) hash() [16]byte {
	var b strings.Builder
	x.w.key(&b)
	x.back.key(&b)
	fmt.Fprintf(&b, "used=%d/%d/%d/%d/%d/%d/%d;", x.usedF, x.usedC, x.usedR, x.usedD, x.usedP, x.usedL, x.usedZ)
	for _, a := range x.actors {
		fmt.Fprintf(&b, "%s:c%d:%v;", a.name, a.conn, a.gate)
		if t := a.task; t != nil {
			ev := ""
			if t.ev != nil {
				ev = t.ev.ID + t.ev.Stored.String()
			}
			obs := slices.Clone(t.obs)
			slices.Sort(obs)
			fmt.Fprintf(&b, "%s:%s:%v:%v;", a.name, ev, obs, t.paused)
		}
	}
	for _, c := range x.sortedPending() {
		fmt.Fprintf(&b, "p=%s/%d/%v/%v/%v;", c.sortKey(), c.conn, c.buffered, c.ghost, x.blocked(c))
	}
	h := fnv.New128a()
	h.Write([]byte(b.String()))
	var out [16]byte
	copy(out[:], h.Sum(nil))
	return out
}

// describe names a step in the words TestScript matches: "deliver e2 A",
// "deliver e1 copy 1 B",
// "serve A delete stream job_7 +drop +pause", "backend", "tick", "lose",
// "resume A", ...
func (x *exec) describe(s step) string {
	switch s.kind {
	case sServe, sRelease, sTimeout:
		verb := map[stepKind]string{sServe: "serve", sRelease: "release", sTimeout: "timeout"}[s.kind]
		// "serve A kv put job 7", "release A delete stream job_7"
		d := fmt.Sprintf("%s %s %s %s", verb, s.c.t.a.name, s.c.op, s.c.target())
		if s.fault != faultNone {
			d += " +" + strings.ReplaceAll(faultNames[s.fault], " ", "-")
		}
		if s.pause {
			d += " +pause"
		}
		return d
	case sDeliver:
		if s.ev.Copy > 0 {
			return fmt.Sprintf("deliver %s copy %d %s", s.ev.ID, s.ev.Copy, s.a.name)
		}
		return fmt.Sprintf("deliver %s %s", s.ev.ID, s.a.name)
	case sBackend:
		return "backend"
	case sReask:
		return "reask"
	case sDuplicate:
		return "duplicate " + s.ev.ID
	case sRedeliver:
		return "redeliver " + s.ev.ID
	case sCrash:
		return "crash " + s.a.name
	case sRenew:
		return "renew " + s.a.name
	case sPass:
		return "pass"
	case sRebuild:
		return "rebuild"
	case sTick:
		return "tick"
	case sLose:
		return "lose"
	case sResume:
		return "resume " + s.a.name
	}
	return "?"
}

// newExecAt is the initial state of cfg's exploration: newExec's, with
// cfg.Prefix's steps taken. A prefix that does not match the model is a
// mistake in the configuration: it panics.
func newExecAt(cfg Config, settle func()) *exec {
	x := newExec(cfg, settle)
	for i, p := range cfg.Prefix {
		found := false
		for _, s := range x.enabled(true) {
			if strings.Contains(x.describe(s), p) {
				x.apply(s)
				x.history[len(x.history)-1] = "prefix: " + x.history[len(x.history)-1]
				found = true
				break
			}
		}
		if !found {
			var have []string
			for _, s := range x.enabled(true) {
				have = append(have, x.describe(s))
			}
			hist := strings.Join(x.history, "\n")
			x.close()
			panic(fmt.Sprintf("modelcheck: %s: prefix step %d (%q) matches no enabled step; enabled: %s\nhistory so far:\n%s",
				cfg.Name, i+1, p, strings.Join(have, " | "), hist))
		}
	}
	return x
}

// Script turns a list of step descriptions into replay choices: at each
// step, the first enabled step whose description (describe) contains the
// pattern. It is how a history of a given shape is written down by hand.
func Script(cfg Config, settle func(), patterns []string) ([]int, error) {
	x := newExecAt(cfg, settle)
	defer x.close()
	x.quiet = true
	var choices []int
	for i, p := range patterns {
		steps := x.enabled(true)
		found := -1
		for j, s := range steps {
			if strings.Contains(x.describe(s), p) {
				found = j
				break
			}
		}
		if found < 0 {
			var have []string
			for _, s := range steps {
				have = append(have, x.describe(s))
			}
			return choices, fmt.Errorf("step %d: no enabled step matches %q; enabled: %s", i+1, p, strings.Join(have, " | "))
		}
		choices = append(choices, found)
		x.apply(steps[found])
	}
	return choices, nil
}
