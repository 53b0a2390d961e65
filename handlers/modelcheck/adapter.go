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
	opPurge  // purge stream: its messages go, the stream stays
	opResume // not a request: a paused replica waits to go on (Config.MaxPauses)
)

var opNames = [...]string{"kv get", "kv put", "server time", "stream info", "consumer info", "delete stream",
	"delete consumer", "answer", "list job streams", "task consumer info", "purge stream", "resume"}

func (o op) String() string { return opNames[o] }

// effect reports whether the request is one of an effect's JetStream calls,
// sent under a claim's authority (the janitor's four calls).
func (o op) effect() bool {
	return o == opStreamInfo || o == opConsumerInfo || o == opDeleteStream || o == opDeleteConsumer || o == opPurge
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
	rev      uint64
	res      events.QueueResult
	kind     string // answers: "cleaned" or "flushed"
	renew    bool
	reply    chan reply
	seq      int // order of arrival within the task, for a stable sort
	buffered bool
	dropped  bool
	ghost    bool // timed out, yet still on its way (MutReconnectBuffer)
}

type reply struct {
	rec   queue.Record
	rev   uint64
	now   time.Time
	sinfo *jetstream.StreamInfo
	cinfo *jetstream.ConsumerInfo
	list  []queue.JobStream
	err   error
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
	}
	return ""
}

// sortKey orders the pending requests independently of goroutine timing.
func (c *call) sortKey() string {
	r := 0
	if c.renew {
		r = 1
	}
	return fmt.Sprintf("%s/%03d/%d/%02d/%s", c.t.a.name, c.t.n, r, int(c.op), c.target())
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
	t.calls++
	c.seq = t.calls
	if !c.op.effect() {
		// A pause that no authority check followed is over: the record
		// writes and answers are not checked against the claim's deadline
		// (a request pending for long is modelled by the request itself).
		t.paused = false
	}
	if x.cfg.Mutation == MutAnswerBeforeRecord && c.op == opPut && c.rec.Lease == nil && c.rec.Done && t.ev != nil {
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

// Incarnation answers at once, without a step: the model's bucket is never
// lost, so it was created long before (an hour before the model's epoch),
// and the check changes nothing in the world.
func (r records) Incarnation(context.Context) (queue.Incarnation, error) {
	r.x.mu.Lock()
	now := r.x.w.Now.time()
	r.x.mu.Unlock()
	return queue.Incarnation{Created: base.Add(-time.Hour), Now: now}, nil
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
	c := &call{op: opResume, t: t, reply: make(chan reply, 1)}
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
	_ handlers.Records = records{}
	_ queue.Server     = server{}
	_ handlers.Emitter = emitter{}
	_ handlers.Lister  = lister{}
)
