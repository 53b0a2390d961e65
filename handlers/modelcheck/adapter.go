package modelcheck

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
)

// op is one request to the model's server: one step of the model.
type op int

const (
	opGet op = iota
	opPut
	opNow
	opStreamInfo
	opConsumerInfo
	opDeleteStream
	opDeleteConsumer
	opEmit
	opList
	opTaskConsumer
	opPurge       // purge stream: its messages go, the stream stays
	opResume      // not a request: a paused replica waits to go on (Config.MaxPauses)
	opIncarnation // the bucket's stream info: its creation time and the server's time
	opMarkerGet   // the rebuild marker (queue.RebuildKey)
	opMarkerPut   // the rebuild marker's compare-and-set write
	opAckFloor    // the service's consumer's ack floor on the event stream
	opReplay      // the rebuild's read of the whole event stream
)

var opNames = [...]string{"kv get", "kv put", "server time", "stream info", "consumer info", "delete stream",
	"delete consumer", "answer", "list job streams", "task consumer info", "purge stream", "resume",
	"bucket info", "kv get rebuild", "kv put rebuild", "event consumer info", "replay events"}

func (o op) String() string { return opNames[o] }

// effect reports whether the request is one of an effect's JetStream calls,
// sent under a claim's authority (the janitor's four calls).
func (o op) effect() bool {
	return o == opStreamInfo || o == opConsumerInfo || o == opDeleteStream || o == opDeleteConsumer || o == opPurge
}

// readOnly reports whether the request changes nothing on the server: one
// that timed out behind a held request is then as good as never sent.
func (o op) readOnly() bool {
	switch o {
	case opPut, opDeleteStream, opDeleteConsumer, opPurge, opMarkerPut, opEmit:
		return false
	}
	return true
}

// errCrashed answers every request of a crashed replica: its goroutine
// unwinds without touching the world.
var errCrashed = errors.New("modelcheck: the replica crashed")

// errNoReply is a request that got no reply in time: it may or may not have
// been applied. The janitor treats it as transient and as possibly applied.
var errNoReply = fmt.Errorf("modelcheck: no reply in time: %w", context.DeadlineExceeded)

type taskKey struct{}
type renewKey struct{}

// call is a request blocked until the scheduler serves it.
type call struct {
	t        *task
	op       op
	job      queue.JobID
	stream   string
	consumer string
	rec      queue.Record
	marker   queue.RebuildMarker
	rev      uint64
	res      events.QueueResult
	kind     string // answers: "cleaned" or "flushed"
	renew    bool
	reply    chan reply
	seq      int // order of arrival within the task, for a stable sort
	// conn is the connection it was sent on (its actor's, as numbered by
	// crashes and aborts); arrived the step during which it was sent.
	conn, arrived int
	// buffered: held in the client's buffer (faultDelay) since step
	// bufferedAt, its caller still waiting. ghost: its caller gave up
	// (timed out), yet it is still in the buffer and may leave later,
	// until its connection is closed. Requests of the same connection sent
	// after it was held wait behind it (exec.blocked).
	buffered   bool
	ghost      bool
	bufferedAt int
	key        string // sortKey, once computed
}

type reply struct {
	rec    queue.Record
	rev    uint64
	now    time.Time
	sinfo  *jetstream.StreamInfo
	cinfo  *jetstream.ConsumerInfo
	list   []queue.JobStream
	inc    queue.Incarnation
	marker queue.RebuildMarker
	seq    uint64
	evs    []events.JobStatus
	err    error
}

func (c *call) target() string {
	switch c.op {
	case opGet, opPut, opTaskConsumer:
		return fmt.Sprintf("job %d", c.job)
	case opStreamInfo, opDeleteStream, opPurge:
		return c.stream
	case opConsumerInfo, opDeleteConsumer:
		return c.stream + "/" + c.consumer
	case opEmit:
		return fmt.Sprintf("job.queue.%s (cause %s, %s)", c.kind, c.res.CauseEventID, c.res.Outcome)
	case opMarkerPut:
		return c.marker.State
	}
	return ""
}

// sortKey orders the pending requests independently of goroutine timing.
func (c *call) sortKey() string {
	if c.key == "" {
		r := 0
		if c.renew {
			r = 1
		}
		c.key = fmt.Sprintf("%s/%03d/%d/%02d/%s", c.t.a.name, c.t.n, r, int(c.op), c.target())
	}
	return c.key
}

// do blocks the calling goroutine until the scheduler serves c.
func (x *exec) do(ctx context.Context, c *call) reply {
	t, _ := ctx.Value(taskKey{}).(*task)
	c.renew = ctx.Value(renewKey{}) != nil
	c.reply = make(chan reply, 1)
	x.mu.Lock()
	if t == nil || t.crashed || x.closing {
		x.mu.Unlock()
		return reply{err: errCrashed}
	}
	c.t = t
	c.conn, c.arrived = t.a.conn, x.stepNo
	c.sortKey()
	t.calls++
	c.seq = t.calls
	if c.op == opEmit || c.op == opPut && c.rec.Lease == nil {
		// A pause that no authority check followed is over once the effect
		// is recorded or answered (or its claim released): those requests
		// are not checked against the claim's deadline. The intent write
		// and the incarnation check in the midst of an effect keep it.
		t.paused = false
	}
	if c.op == opPut && c.rec.Lease != nil {
		t.token = c.rec.Lease.Token
	}
	if x.cfg.Mutation == MutAnswerBeforeRecord && c.op == opPut && c.rec.Lease == nil && t.ev != nil &&
		c.rec.Effect != nil && c.rec.Effect.Finished && c.rec.Effect.Token == t.token {
		x.earlyAnswer(t)
	}
	x.pending = append(x.pending, c)
	x.mu.Unlock()
	return <-c.reply
}

// records is the key-value store of per-job records ([handlers.Records]).
type records struct{ x *exec }

func (r records) Get(ctx context.Context, id queue.JobID) (queue.Record, uint64, error) {
	rep := r.x.do(ctx, &call{op: opGet, job: id})
	return rep.rec, rep.rev, rep.err
}

func (r records) Put(ctx context.Context, id queue.JobID, rec queue.Record, rev uint64) (uint64, error) {
	rep := r.x.do(ctx, &call{op: opPut, job: id, rec: rec, rev: rev})
	return rep.rev, rep.err
}

func (r records) ServerNow(ctx context.Context) (time.Time, error) {
	rep := r.x.do(ctx, &call{op: opNow})
	return rep.now, rep.err
}

// Incarnation is the gate's check of the bucket (queue.Store.Incarnation):
// its creation time and the server's time. When the bucket can be lost
// (Config.MaxLosses without RecordExpiry) it is a request, one step, as
// every other: what it sees depends on when it is served. Otherwise it
// answers at once, without a step: the bucket is then the one created an
// hour before the model's epoch for the whole history, so every answer
// admits (its age is far past the quarantine, and the incarnation is the
// one admitted before), whenever it were served; a step would only
// multiply the interleavings by the moments at which nothing differs. The
// step-free answer reads the clock under the lock while the scheduler waits
// (exec.quiesce), so it is the time of the step that let the caller run.
func (r records) Incarnation(ctx context.Context) (queue.Incarnation, error) {
	if !r.x.lossy() {
		r.x.mu.Lock()
		inc := queue.Incarnation{Created: r.x.w.Bucket.time(), Now: r.x.w.Now.time()}
		r.x.mu.Unlock()
		return inc, nil
	}
	rep := r.x.do(ctx, &call{op: opIncarnation})
	return rep.inc, rep.err
}

// markers is the rebuild marker's store ([handlers.MarkerStore]), in the
// same bucket as the records. Without bucket loss the marker is the first
// bucket's, done before the model begins, and never changes: it is read
// without a step, for the reason Incarnation gives.
type markers struct{ x *exec }

func (m markers) RebuildMarker(ctx context.Context) (queue.RebuildMarker, uint64, error) {
	if !m.x.lossy() {
		m.x.mu.Lock()
		defer m.x.mu.Unlock()
		sm := m.x.w.Marker
		mk := copyMarker(sm.M)
		mk.At = sm.At.time()
		return mk, sm.Rev, nil
	}
	rep := m.x.do(ctx, &call{op: opMarkerGet})
	return rep.marker, rep.rev, rep.err
}

func (m markers) PutJSON(ctx context.Context, key string, v any, rev uint64) (uint64, error) {
	mk, ok := v.(queue.RebuildMarker)
	if key != queue.RebuildKey || !ok {
		return 0, fmt.Errorf("modelcheck: the model's marker store keeps only the rebuild marker, not %q (%T)", key, v)
	}
	rep := m.x.do(ctx, &call{op: opMarkerPut, marker: mk, rev: rev})
	return rep.rev, rep.err
}

// eventReplay is the event stream as the rebuild reads it ([handlers.Replay]):
// each call one request, one step. The read of the whole stream is one
// step (events published after it began are left to the intake, as the
// real replay leaves those after its last sequence).
type eventReplay struct{ x *exec }

// The model's event stream is never lost: it was created before any event,
// so the stream's creation time is left zero (no event is stored before it).
func (r eventReplay) Events(ctx context.Context, fn func(seq uint64, ev events.JobStatus)) (uint64, time.Time, error) {
	rep := r.x.do(ctx, &call{op: opReplay})
	if rep.err != nil {
		return 0, time.Time{}, rep.err
	}
	for i, ev := range rep.evs {
		fn(uint64(i+1), ev)
	}
	return rep.seq, time.Time{}, nil
}

func (r eventReplay) AckFloor(ctx context.Context) (uint64, time.Time, error) {
	rep := r.x.do(ctx, &call{op: opAckFloor})
	return rep.seq, time.Time{}, rep.err
}

// server is the janitor's four JetStream calls ([queue.Server]).
type server struct{ x *exec }

func (s server) StreamInfo(ctx context.Context, stream string) (*jetstream.StreamInfo, error) {
	rep := s.x.do(ctx, &call{op: opStreamInfo, stream: stream})
	return rep.sinfo, rep.err
}

func (s server) ConsumerInfo(ctx context.Context, stream, consumer string) (*jetstream.ConsumerInfo, error) {
	rep := s.x.do(ctx, &call{op: opConsumerInfo, stream: stream, consumer: consumer})
	return rep.cinfo, rep.err
}

func (s server) DeleteStream(ctx context.Context, stream string) error {
	return s.x.do(ctx, &call{op: opDeleteStream, stream: stream}).err
}

// PurgeStream empties the stream: its tasks go, the stream and its
// consumers stay. Purging a run's tasks is judged like deleting its stream
// (world.mayDelete).
func (s server) PurgeStream(ctx context.Context, stream string) error {
	return s.x.do(ctx, &call{op: opPurge, stream: stream}).err
}

func (s server) DeleteConsumer(ctx context.Context, stream, consumer string) error {
	return s.x.do(ctx, &call{op: opDeleteConsumer, stream: stream, consumer: consumer}).err
}

// pausePoint is where a replica may stand still (Config.MaxPauses): the
// janitor reads its clock just before each authority check (and after a
// failed request), so a task marked paused by the scheduler blocks here,
// after the reply of its last request and before its next check, until a
// resume step. Every goroutine of the task (the janitor deletes the stream
// and the dead-letter consumer concurrently) waits alike, so the state
// does not depend on which reaches it first.
func (x *exec) pausePoint(a *actor) {
	x.mu.Lock()
	t := a.task
	if t == nil || !t.paused || t.crashed || x.closing {
		x.mu.Unlock()
		return
	}
	c := &call{op: opResume, t: t, reply: make(chan reply, 1), conn: a.conn, arrived: x.stepNo}
	c.sortKey()
	t.calls++
	c.seq = t.calls
	x.pending = append(x.pending, c)
	x.mu.Unlock()
	<-c.reply
}

// emitter publishes the answers ([handlers.Emitter]).
type emitter struct{ x *exec }

func (e emitter) Cleaned(ctx context.Context, r events.QueueResult) error {
	return e.x.do(ctx, &call{op: opEmit, kind: "cleaned", res: r}).err
}

func (e emitter) Flushed(ctx context.Context, r events.QueueResult) error {
	return e.x.do(ctx, &call{op: opEmit, kind: "flushed", res: r}).err
}

// lister is the reconciler's view of the job streams ([handlers.Lister]).
type lister struct{ x *exec }

func (l lister) JobStreams(ctx context.Context, fn func(queue.JobStream) error) error {
	rep := l.x.do(ctx, &call{op: opList})
	if rep.err != nil {
		return rep.err
	}
	for _, s := range rep.list {
		if err := fn(s); err != nil {
			return err
		}
	}
	return nil
}

// DeadLetterConsumers lists none: the model's reconciler judges job
// streams only (a dead-letter consumer left without its stream is covered by
// the integration tests).
func (l lister) DeadLetterConsumers(context.Context, func(queue.JobID, *jetstream.ConsumerInfo) error) error {
	return nil
}

func (l lister) TaskConsumer(ctx context.Context, id queue.JobID) (*jetstream.ConsumerInfo, error) {
	rep := l.x.do(ctx, &call{op: opTaskConsumer, job: id})
	return rep.cinfo, rep.err
}

var (
	_ handlers.Records     = records{}
	_ handlers.MarkerStore = markers{}
	_ handlers.Replay      = eventReplay{}
	_ queue.Server         = server{}
	_ handlers.Emitter     = emitter{}
	_ handlers.Lister      = lister{}
)
