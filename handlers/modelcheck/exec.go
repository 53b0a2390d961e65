package modelcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
)

// Lease is the lease of the model's replicas: the shortest the handler
// accepts. With one tick a second, a holder stops sending a tick before
// its lease ends ([handlers.Config.Lease]).
const Lease = 4 * time.Second

// Grace is the reconciler's grace period in the model.
const Grace = 2 * time.Second

// actor is a replica (or the reconciler): a real handler, with its own
// janitor over the model's server, its own clock, one task at a time.
type actor struct {
	name   string
	offset time.Duration
	h      *handlers.Handler
	rc     *handlers.Reconciler
	// rb is the handler's Rebuilder; the rebuild actor runs its Ensure.
	rb       *handlers.Rebuilder
	rebuilds bool
	task     *task
	tasks    int
	claims   int
	// conn numbers the actor's connection: a new one after each crash and
	// each abort (the janitor's WithAbort).
	conn int
	// gate is what the handler's gate has read (the bucket's incarnation
	// and rebuild marker), which decides what it has admitted: state that
	// outlives its tasks, for the state hash. (Without bucket loss those
	// reads are step-free and always admit, so the gate's state then
	// changes nothing.)
	gate []string
}

func (a *actor) reconciler() bool { return a.rc != nil }

// task is one Handle (or one reconciler pass) running in a goroutine.
type task struct {
	a       *actor
	n       int
	ev      *modelEvent
	claim   handlers.ClaimHandle
	calls   int
	crashed bool
	done    bool
	// paused: the task stands still before its next authority check
	// (pausePoint) until a resume step.
	paused bool
	// MutNoCheckAfterPurge: a purge was answered; the next authority
	// check sees no deadline.
	skipCheck bool
	// MutRetryIgnoresCreation: the creation time first seen of each
	// resource this task looked up.
	seen map[string]time.Time
	// token is the lease token of the task's last claim write.
	token string
	out   events.Outcome
	err   error
	// obs is what it has observed (each reply, tagged by its request), for
	// the state hash; occ counts a request's occurrences. It is hashed as a
	// set: replies to its concurrent goroutines (the claim's write beside the
	// stream's read, the incarnation check beside the intent write, the
	// dead-letter consumer's delete beside the stream's) in either order
	// leave it in the same state when they say the same; one goroutine's
	// repeated requests keep their order by their occurrence numbers.
	obs []string
	occ map[string]int
}

// observe records what the task learnt from c.
func (t *task) observe(c *call, what string) {
	if t.occ == nil {
		t.occ = map[string]int{}
	}
	key := c.sortKey()
	n := t.occ[key]
	t.occ[key]++
	t.obs = append(t.obs, fmt.Sprintf("%s#%d=%s", key, n, what))
}

// context is the context of the task's requests: the adapter tells by it
// whose request it is.
func (t *task) context() context.Context {
	return context.WithValue(context.Background(), taskKey{}, t)
}

// exec is one execution of the model, from the initial state along a
// sequence of choices.
type exec struct {
	cfg    Config
	w      *world
	actors []*actor
	back   backend
	settle func()

	mu       sync.Mutex
	pending  []*call
	closing  bool
	wg       sync.WaitGroup
	slept    bool // a transient error was answered: let backoff timers fire
	usedF    int  // faults used
	usedC    int  // crashes used
	usedR    int  // renewals used
	usedD    int  // duplicates used
	usedP    int  // reconciler passes used
	usedL    int  // bucket losses used
	usedZ    int  // pauses used
	stepNo   int  // steps applied so far (a request's arrival)
	violated string
	history  []string
	activity int  // steps by anyone but the clock and the reconciler
	quiet    bool // no history text (exploring; a counterexample is replayed with it)
	failed   bool // the last handled event failed (for the fair completion)
}

// newExec builds the initial state: two replicas, the reconciler, the
// rebuild loop when the bucket can be lost, the backend at the start of
// its script.
func newExec(cfg Config, settle func()) *exec {
	x := &exec{cfg: cfg, w: newWorld(), settle: settle}
	x.back = newBackend(cfg)
	for i, name := range []string{"A", "B"} {
		x.actors = append(x.actors, x.newActor(name, cfg.ReplicaOffsets[i], false))
	}
	x.actors = append(x.actors, x.newActor("R", cfg.ReplicaOffsets[0], true))
	if x.lossy() && cfg.Mutation != MutRebuildOff {
		q := x.newActor("Q", cfg.ReplicaOffsets[1], false)
		q.rebuilds = true
		x.actors = append(x.actors, q)
	}
	// The backend creates run 1's stream and dead-letter consumer and
	// publishes its terminal event before anything else can happen that
	// matters: the initial state. (A bucket lost, or a reconciler pass,
	// before the event exists is one just after it, a few milliseconds
	// apart: no decision depends on so little.)
	if cfg.RestartedBefore {
		x.restartedBefore()
	}
	for x.back.script[x.back.pc] != bTerminal {
		x.history = append(x.history, "start: "+x.backendStep())
	}
	x.history = append(x.history, "start: "+x.backendStep())
	return x
}

// restartedBefore (Config.RestartedBefore) runs what came before run 1, a
// minute before the model's epoch, without a choice: the backend publishes
// run 1's restart request e0, replica A handles it (every request served
// as sent, no fault) and answers, and the backend goes on to run 1. Job 7's
// record then holds the finished flush and when it was done (CleanedAt).
func (x *exec) restartedBefore() {
	x.w.Now = stamp{S: -60}
	x.history = append(x.history, "start: "+x.backendStep())
	e0 := x.w.Events[len(x.w.Events)-1]
	a := x.actors[0]
	x.apply(step{kind: sDeliver, ev: e0, a: a})
	for a.task != nil {
		var next *step
		for _, s := range x.enabled(false) {
			if s.kind == sServe && s.c.t.a == a || s.kind == sResume && s.a == a {
				next = &s
				break
			}
		}
		if next == nil {
			panic("modelcheck: RestartedBefore: replica A waits for nothing it can be served")
		}
		x.apply(*next)
	}
	if e0.State != evAcked || !x.backendEnabled() {
		panic(fmt.Sprintf("modelcheck: RestartedBefore: run 1's restart request was not handled and answered:\n%s",
			strings.Join(x.history, "\n")))
	}
	x.history = append(x.history, "start: "+x.backendStep())
	for i := 1; i < len(x.history); i++ {
		if !strings.HasPrefix(x.history[i], "start: ") {
			x.history[i] = "start: " + x.history[i]
		}
	}
	x.w.Now = stamp{}
}

// lossy reports whether the bucket itself can be lost (not only a record
// expire): only then are the gate's checks steps.
func (x *exec) lossy() bool { return x.cfg.MaxLosses > 0 && !x.cfg.RecordExpiry }

// rebuilder is the actor that runs the rebuild loop, nil when none does.
func (x *exec) rebuilder() *actor {
	if len(x.actors) > 3 {
		return x.actors[3]
	}
	return nil
}

func (x *exec) newActor(name string, offset time.Duration, reconciler bool) *actor {
	a := &actor{name: name, offset: offset}
	clock := func() time.Time { return x.w.Now.time().Add(offset) }
	jclock := func() time.Time {
		// The janitor reads its clock just before each authority check:
		// where a paused replica stands still.
		x.pausePoint(a)
		return clock()
	}
	if x.cfg.Mutation == MutAuthorityNeverExpires {
		// The janitor judges the authority by a clock that never reaches
		// any deadline.
		jclock = func() time.Time { return base.Add(-24 * time.Hour) }
	}
	var srv queue.Server = server{x}
	switch x.cfg.Mutation {
	case MutFenceIgnoresCreation:
		srv = ancientServer{server{x}}
	case MutRetryIgnoresCreation:
		srv = sameCreationServer{server{x}, x, a}
	case MutNoCheckAfterPurge:
		srv = purgeMarkingServer{server{x}, x, a}
	}
	owner := "replica-" + name
	if reconciler {
		owner = "reconciler"
	}
	jan := queue.NewJanitor(nil, names,
		queue.WithServer(srv), queue.WithClock(jclock), queue.WithAbort(func() { x.abort(a) }),
		queue.WithRetryPolicy(queue.RetryPolicy{Initial: time.Millisecond, Max: time.Millisecond,
			MaxElapsed: 1000 * time.Hour, AttemptTimeout: 1000 * time.Hour}))
	hcfg := handlers.DefaultConfig(owner)
	hcfg.Lease = Lease
	// The quarantine is the lease, as DefaultConfig makes it.
	hcfg.Quarantine = Lease
	if x.cfg.Mutation == MutQuarantineOff || x.cfg.TrustNewBucket {
		hcfg.Quarantine = 0
	}
	var recs handlers.Records = records{x}
	switch x.cfg.Mutation {
	case MutLeaseByHolderClock:
		recs = holderClockRecords{records{x}}
	case MutRestartDoneIgnored:
		recs = version2Records{records{x}}
	}
	var q handlers.Queue = jan
	if x.cfg.Mutation == MutNoCheckAfterPurge {
		q = uncheckedAfterPurge{jan, x, a}
	}
	opts := []handlers.Option{handlers.WithClock(clock), handlers.WithoutRenewal(),
		handlers.WithClaimHook(func(c handlers.ClaimHandle) {
			x.mu.Lock()
			defer x.mu.Unlock()
			if a.task != nil {
				a.task.claim = c
			}
		})}
	if x.cfg.Mutation != MutRebuildOff {
		// As serve configures every handler: no claim acts in a bucket
		// incarnation without its rebuild marker.
		opts = append(opts, handlers.WithRebuild(eventReplay{x}, markers{x}, zerolog.Nop(), &a.rb))
	}
	a.h = handlers.New(q, recs, emitter{x}, hcfg, opts...)
	if reconciler {
		a.rc = handlers.NewReconciler(a.h, lister{x}, recs, nil,
			handlers.SweepConfig{Grace: Grace, OrphanIdle: 100 * time.Second},
			handlers.ReconcilerDeps{Logger: zerolog.Nop()})
	}
	return a
}

// now is an actor's clock: the server's plus its offset.
func (x *exec) now(a *actor) time.Time { return x.w.Now.time().Add(a.offset) }

// start runs fn as a's new task.
func (x *exec) start(a *actor, ev *modelEvent, fn func(ctx context.Context) (events.Outcome, error)) {
	a.tasks++
	t := &task{a: a, n: a.tasks, ev: ev}
	ctx := t.context()
	x.mu.Lock()
	a.task = t
	x.mu.Unlock()
	x.wg.Add(1)
	go func() {
		defer x.wg.Done()
		out, err := fn(ctx)
		x.mu.Lock()
		t.done, t.out, t.err = true, out, err
		x.mu.Unlock()
	}()
}

// quiesce lets every goroutine run until it waits for the scheduler, then
// settles what finished.
func (x *exec) quiesce() {
	x.settle()
	if x.slept {
		// A transient error sends the janitor into its backoff (1ms in
		// the bubble's fake clock): let it fire.
		x.slept = false
		time.Sleep(10 * time.Millisecond)
		x.settle()
	}
	for _, a := range x.actors {
		t := a.task
		if t == nil || !t.done {
			continue
		}
		a.task = nil
		x.finished(t)
	}
}

// finished settles a task that returned: its event is acked, or handed
// back for redelivery.
func (x *exec) finished(t *task) {
	who := t.a.name
	if t.a.reconciler() {
		x.note(fmt.Sprintf("   reconciler pass ends (err: %v)", t.err))
		return
	}
	if t.a.rebuilds {
		x.note(fmt.Sprintf("   rebuild loop: Ensure returns (err: %v)", t.err))
		return
	}
	e := t.ev
	e.Handler = ""
	if t.err == nil {
		e.State = evAcked
		x.failed = false
		x.note(fmt.Sprintf("   replica %s: %s handled: %s %s → acked", who, e.label(), t.out.Decision, t.out.Result))
		return
	}
	e.State = evPending
	x.failed = true
	var busy *handlers.BusyError
	if errors.As(t.err, &busy) {
		x.note(fmt.Sprintf("   replica %s: %s busy (lease of %s) → handed back", who, e.label(), busy.Holder))
		return
	}
	x.note(fmt.Sprintf("   replica %s: %s failed (%v) → nak, redelivered later", who, e.label(), t.err))
}

// note adds a line to the current step's history entry.
func (x *exec) note(s string) {
	if n := len(x.history); n > 0 && !x.quiet {
		x.history[n-1] += "\n" + s
	}
}

// abort is the janitor's WithAbort: the process's connection is closed
// abortively, so its requests still in the client's buffer never reach the
// server: those whose caller gave up vanish, those whose caller waits fail
// (the connection is gone). The next requests go out on a new connection.
// Under MutReconnectBuffer a reconnect buffer keeps them: they may still
// reach the server at any later step.
func (x *exec) abort(a *actor) {
	x.mu.Lock()
	var fail, gone []*call
	for _, c := range x.pending {
		if c.t.a != a || c.conn != a.conn || c.op == opResume {
			continue
		}
		if x.cfg.Mutation == MutReconnectBuffer {
			continue
		}
		switch {
		case c.ghost:
			gone = append(gone, c)
		case c.buffered || x.blockedLocked(c):
			fail = append(fail, c)
		}
	}
	a.conn++
	x.mu.Unlock()
	for _, c := range gone {
		x.remove(c)
	}
	for _, c := range fail {
		x.failCall(c, errNoReply)
	}
}

// blockedLocked reports whether c waits behind a request of its connection
// held in the client's buffer: requests leave a connection in the order
// sent, so a request sent after one that is held cannot reach the server
// before it (exec.mu held).
func (x *exec) blockedLocked(c *call) bool {
	if c.op == opResume {
		return false
	}
	for _, b := range x.pending {
		if b != c && (b.buffered || b.ghost) && b.t.a == c.t.a && b.conn == c.conn && c.arrived >= b.bufferedAt {
			return true
		}
	}
	return false
}

func (x *exec) blocked(c *call) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.blockedLocked(c)
}

// close ends the execution: every blocked goroutine gets an error and
// exits before close returns.
func (x *exec) close() {
	x.mu.Lock()
	x.closing = true
	pend := x.pending
	x.pending = nil
	for _, a := range x.actors {
		if a.task != nil {
			a.task.crashed = true
		}
	}
	x.mu.Unlock()
	for _, c := range pend {
		c.reply <- reply{err: errCrashed}
	}
	x.wg.Wait()
}

// sortedPending returns the pending requests in a stable order.
func (x *exec) sortedPending() []*call {
	x.mu.Lock()
	defer x.mu.Unlock()
	sort.SliceStable(x.pending, func(i, j int) bool { return x.pending[i].sortKey() < x.pending[j].sortKey() })
	return append([]*call(nil), x.pending...)
}

func (x *exec) remove(c *call) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for i, p := range x.pending {
		if p == c {
			x.pending = append(x.pending[:i], x.pending[i+1:]...)
			return
		}
	}
}

// copyMarker is the rebuild marker through its JSON encoding.
func copyMarker(m queue.RebuildMarker) queue.RebuildMarker {
	var out queue.RebuildMarker
	roundTrip(m, &out)
	return out
}

func roundTrip(in, out any) {
	b, err := json.Marshal(in)
	if err == nil {
		err = json.Unmarshal(b, out)
	}
	if err != nil {
		panic(fmt.Sprintf("modelcheck: %T does not go through JSON: %v", in, err))
	}
}

// fault is how a request goes wrong.
type fault int

const (
	faultNone      fault = iota
	faultLostReply       // applied, but the reply is lost
	faultDrop            // never applied; no reply
	faultDelay           // held in the client's buffer; sent later or never
)

var faultNames = [...]string{"", "reply lost", "dropped", "delayed"}

// serve applies c to the world and answers it. It returns the history
// text.
func (x *exec) serve(c *call, f fault) string {
	x.remove(c)
	w := x.w
	var rep reply
	var what string
	switch c.op {
	case opGet:
		if r, ok := w.Recs[c.job]; ok {
			rep.rec, rep.rev = r.record(), r.Rev
			if !x.quiet {
				what = fmt.Sprintf("rev %d (%s)", r.Rev, describeRecord(w, r))
			}
		} else {
			what = "no record"
		}
	case opPut:
		what = x.put(c, f, &rep)
	case opNow:
		rep.now = w.Now.time()
		what = w.Now.String()
	case opStreamInfo:
		rep.sinfo = w.streamInfo(c.stream)
		what = describeFound(w, c.stream)
	case opConsumerInfo:
		rep.cinfo = w.consumerInfo(c.stream, c.consumer)
		what = describeFound(w, consumerKey(c.stream, c.consumer))
	case opDeleteStream, opDeleteConsumer:
		what = x.delete(c, f, &rep)
	case opPurge:
		what = x.purge(c, f, &rep)
	case opEmit:
		a := answer{Kind: c.kind, Cause: c.res.CauseEventID, Outcome: c.res.Outcome, Trigger: c.res.Trigger, Lost: f == faultLostReply}
		w.Answers = append(w.Answers, a)
		what = "sent"
		if a.Lost {
			what = "LOST on the way (core NATS)"
		}
	case opList:
		for _, name := range []string{names.StreamName(job), names.StreamName(otherJob)} {
			if info := w.streamInfo(name); info != nil {
				id, _ := names.JobFromStream(name)
				rep.list = append(rep.list, queue.JobStream{ID: id, Info: info})
				what += name + " "
			}
		}
		if what == "" {
			what = "none"
		}
	case opTaskConsumer:
		rep.cinfo = w.consumerInfo(names.StreamName(c.job), names.ConsumerName(c.job))
	case opIncarnation:
		rep.inc = queue.Incarnation{Created: w.Bucket.time(), Now: w.Now.time()}
		what = fmt.Sprintf("created %s, now %s", w.Bucket, w.Now)
	case opMarkerGet:
		if m := w.Marker; m != nil {
			rep.marker, rep.rev = copyMarker(m.M), m.Rev
			rep.marker.At = m.At.time()
			if !x.quiet {
				what = fmt.Sprintf("rev %d (%s)", m.Rev, describeMarker(w, m))
			}
		} else {
			what = "none"
		}
	case opMarkerPut:
		what = x.putMarker(c, &rep)
	case opAckFloor:
		for _, e := range w.Events {
			if e.State != evAcked {
				break
			}
			rep.seq++
		}
		what = fmt.Sprintf("ack floor %d", rep.seq)
	case opReplay:
		for _, e := range w.Events {
			rep.evs = append(rep.evs, e.jobStatus())
		}
		rep.seq = uint64(len(w.Events))
		what = fmt.Sprintf("%d events", len(w.Events))
	}
	if !c.ghost {
		// (A request whose caller gave up tells it nothing.)
		obs := canonObs(x, c, rep)
		c.t.observe(c, obs)
		if (c.op == opIncarnation || c.op == opMarkerGet) && !c.t.a.rebuilds {
			c.t.a.gate = append(c.t.a.gate, obs)
		}
	}
	if rep.err != nil && !errors.Is(rep.err, queue.ErrConflict) && !errors.Is(rep.err, queue.ErrGone) {
		x.slept = true
	}
	c.reply <- rep
	if x.quiet {
		return ""
	}
	who := x.who(c)
	if c.renew {
		who += " (renewal)"
	}
	if rep.err != nil {
		what += " → error: " + shortErr(rep.err)
	}
	return fmt.Sprintf("%s: %s %s → %s", who, c.op, c.target(), what)
}

func shortErr(err error) string {
	switch {
	case errors.Is(err, queue.ErrConflict):
		return "revision conflict"
	case errors.Is(err, queue.ErrGone):
		return "not found"
	case errors.Is(err, errNoReply):
		return "no reply (timeout)"
	}
	return err.Error()
}

// canonObs is what a reply tells its caller, with lease tokens named by
// their claims.
func canonObs(x *exec, c *call, rep reply) string {
	var b strings.Builder
	if rep.err != nil {
		b.WriteString(shortErr(rep.err))
	}
	switch c.op {
	case opGet:
		if r, ok := x.w.Recs[c.job]; ok && rep.err == nil {
			fmt.Fprintf(&b, "%d@%v %s", r.Rev, r.At, r.Canon) // what the reply decodes
		}
	case opPut, opMarkerPut, opAckFloor:
		fmt.Fprintf(&b, "%d/%d", rep.rev, rep.seq)
	case opIncarnation:
		fmt.Fprintf(&b, "%s/%s", rep.inc.Created.Sub(base), rep.inc.Now.Sub(base))
	case opMarkerGet:
		fmt.Fprintf(&b, "%d@%s %s", rep.rev, rep.marker.At.Sub(base), x.w.canonMarker(rep.marker))
	case opReplay:
		fmt.Fprintf(&b, "%d", rep.seq)
	case opNow:
		b.WriteString(rep.now.Sub(base).String())
	case opStreamInfo:
		if rep.sinfo != nil {
			b.WriteString(rep.sinfo.Created.Sub(base).String())
		}
	case opConsumerInfo, opTaskConsumer:
		if rep.cinfo != nil {
			b.WriteString(rep.cinfo.Created.Sub(base).String())
		}
	case opList:
		for _, s := range rep.list {
			b.WriteString(s.Info.Config.Name)
		}
	}
	return b.String()
}

func describeFound(w *world, key string) string {
	if r, ok := w.Resources[key]; ok {
		return "found " + r.describe()
	}
	return "not found"
}

func describeRecord(w *world, r *storedRecord) string {
	rec := r.Rec
	s := fmt.Sprintf("%s %s", rec.State, rec.EventID)
	if rec.Attempt != nil {
		s += fmt.Sprintf(" attempt=%d", *rec.Attempt)
	}
	if rec.Done {
		s += " done"
	}
	if rec.RestartID != "" {
		s += fmt.Sprintf(", restart %s first at %s", rec.RestartID, stampOf(rec.RestartStored))
		if rec.RestartDone {
			s += " done"
		}
	}
	if e := rec.Effect; e != nil {
		s += fmt.Sprintf(", effect %s", w.canon(e.Cause))
		switch {
		case e.Finished:
			s += " finished (" + e.Outcome + ")"
		case e.Stream != "":
			s += fmt.Sprintf(" about to remove %s created %s", e.Stream, stampOf(e.StreamCreated))
		case e.DeadLetter:
			s += " about to remove the dead-letter consumer"
		}
	}
	if rec.Lease != nil {
		at := r.At
		if !rec.Lease.Since.IsZero() {
			at = stampOf(rec.Lease.Since)
		}
		s += fmt.Sprintf(", lease %s until %s", w.tokens[rec.Lease.Token],
			stamp{S: at.S + int(rec.Lease.TTL/time.Second), K: at.K})
	}
	return s
}

func describeMarker(w *world, m *storedMarker) string {
	s := fmt.Sprintf("%s for the bucket created %s", m.M.State, stampOf(m.M.Incarnation))
	if m.M.State == queue.RebuildRunning {
		s += fmt.Sprintf(", lease %s until %s", w.tokens[m.M.Token], stamp{S: m.At.S + int(m.M.TTL/time.Second), K: m.At.K})
	}
	return s
}

// putMarker is the store's compare-and-set write of the rebuild marker.
func (x *exec) putMarker(c *call, rep *reply) string {
	w := x.w
	var cur uint64
	if w.Marker != nil {
		cur = w.Marker.Rev
	}
	if c.rev != cur {
		rep.err = queue.ErrConflict
		return fmt.Sprintf("expected rev %d, is %d", c.rev, cur)
	}
	m := copyMarker(c.marker)
	if m.Token != "" {
		if _, ok := w.tokens[m.Token]; !ok {
			c.t.a.claims++
			w.tokens[m.Token] = fmt.Sprintf("%s#%d", c.t.a.name, c.t.a.claims)
		}
	}
	w.NextRev++
	w.Marker = &storedMarker{M: m, Rev: w.NextRev, At: w.tick()}
	rep.rev = w.Marker.Rev
	if x.quiet {
		return ""
	}
	return fmt.Sprintf("rev %d at %s (%s)", w.Marker.Rev, w.Marker.At, describeMarker(w, w.Marker))
}

// put is the store's compare-and-set write.
func (x *exec) put(c *call, f fault, rep *reply) string {
	w := x.w
	var cur uint64
	if r, ok := w.Recs[c.job]; ok {
		cur = r.Rev
	}
	if f == faultDrop {
		rep.err = errNoReply
		return "request cut: not applied"
	}
	if c.rev != cur {
		rep.err = queue.ErrConflict
		return fmt.Sprintf("expected rev %d, is %d", c.rev, cur)
	}
	rec := c.rec
	if rec.Lease != nil {
		if _, ok := w.tokens[rec.Lease.Token]; !ok {
			c.t.a.claims++
			w.tokens[rec.Lease.Token] = fmt.Sprintf("%s#%d", c.t.a.name, c.t.a.claims)
		}
	}
	w.NextRev++
	sr := w.store(rec, w.NextRev, w.tick())
	w.Recs[c.job] = sr
	rep.rev = sr.Rev
	var what string
	if !x.quiet {
		what = fmt.Sprintf("rev %d at %s (%s)", sr.Rev, sr.At, describeRecord(w, sr))
	}
	if f == faultLostReply {
		// The store's retry finds the revision moved on: a conflict.
		rep.rev, rep.err = 0, queue.ErrConflict
		what += ", reply lost: the store's retry sees a conflict"
	}
	return what
}

// delete removes a stream or consumer, checking the safety property.
func (x *exec) delete(c *call, f fault, rep *reply) string {
	w := x.w
	if f == faultDrop {
		rep.err = errNoReply
		return "request dropped: not applied, no reply"
	}
	key := streamKey(c.stream)
	if c.op == opDeleteConsumer {
		key = consumerKey(c.stream, c.consumer)
	}
	r, ok := w.Resources[key]
	var what string
	if !ok {
		rep.err = queue.ErrGone
		what = "nothing there"
	} else {
		delete(w.Resources, key)
		w.tick()
		w.Deleted = append(w.Deleted, key)
		what = "DELETED " + r.describe() + x.judge(r, "deleted")
	}
	return lostReply(f, rep, what)
}

// judge checks the safety property for r, deleted or purged (verb): the
// violation, if any, is noted on the step and kept as the history's first.
func (x *exec) judge(r *resource, verb string) string {
	why := x.w.mayDelete(r, verb)
	if why == "" {
		return ""
	}
	if x.violated == "" {
		x.violated = why
	}
	return "  ← " + why
}

// lostReply applies a lost-reply fault to a request the server carried out.
func lostReply(f fault, rep *reply, what string) string {
	if f == faultLostReply {
		rep.err = errNoReply
		what += ", reply lost"
	}
	return what
}

// purge empties a stream (its tasks go; the stream and its consumers stay),
// checking the safety property: purging a run's tasks is judged like
// deleting its stream.
func (x *exec) purge(c *call, f fault, rep *reply) string {
	w := x.w
	if f == faultDrop {
		rep.err = errNoReply
		return "request dropped: not applied, no reply"
	}
	r, ok := w.Resources[streamKey(c.stream)]
	var what string
	switch {
	case !ok:
		rep.err = queue.ErrGone
		what = "nothing there"
	case r.Msgs == 0:
		w.tick()
		what = "purged " + r.describe() + " (it held no tasks)"
	default:
		n := r.Msgs
		r.Msgs = 0
		w.tick()
		what = fmt.Sprintf("PURGED %s: %d tasks gone", r.describe(), n) + x.judge(r, "purged")
	}
	return lostReply(f, rep, what)
}

// resume lets a paused task go on: every goroutine of it waiting at its
// pause point (pausePoint) proceeds to its authority check.
func (x *exec) resume(a *actor) string {
	t := a.task
	x.mu.Lock()
	t.paused = false
	var mine []*call
	for _, c := range x.pending {
		if c.t == t && c.op == opResume {
			mine = append(mine, c)
		}
	}
	x.mu.Unlock()
	for _, c := range mine {
		x.remove(c)
		c.reply <- reply{}
	}
	t.observe(&call{op: opResume, t: t, key: "resume"}, "resumed")
	// A task paused after a failed request goes on into the janitor's
	// backoff: let its timer fire.
	x.slept = true
	return fmt.Sprintf("replica %s: resumes at %s (its clock: %s; its deadline %s)", a.name, x.w.Now,
		x.now(a).Sub(base), t.claim.Deadline().Sub(base))
}

// errs for the crashed and the buffered.
func (x *exec) failCall(c *call, err error) {
	x.remove(c)
	c.t.observe(c, shortErr(err))
	if !errors.Is(err, errCrashed) {
		x.slept = true
	}
	c.reply <- reply{err: err}
}
