// Package queue holds what can be done to a job's JetStream resources: its
// task stream, its task consumer and its dead-letter consumer on the shared
// advisory stream, named by the backend's patterns ([Names]). It also keeps
// the per-job records ([Store]) that the service's decisions rest on.
//
// Every call to the server has a deadline and is retried with exponential
// backoff and jitter while it fails with a transient error ([IsTransient]).
// "Stream not found" and "consumer not found" mean already clean and are
// never errors.
package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// ErrAuthorityExpired is returned by [Janitor.Remove] when the caller's
// right to act (its [Authority]) ran out before a request could be sent.
// Nothing more was sent; the caller should decide again from fresh state.
var ErrAuthorityExpired = errors.New("authority to act on the queue expired")

// ErrLeaseLost is returned when a claim's lease on a job was taken over
// (another claim wrote the record) before its effect could be recorded: the
// other claim finishes the job's effect. Like [ErrAuthorityExpired] it calls
// for handling the event again later.
var ErrLeaseLost = errors.New("the claim's lease on the job was taken over")

// Authority is a claim's right to send requests about a job's queue. The
// janitor checks it before every request, retries included, and bounds each
// request's deadline by it, so that no request of an effect is sent after
// the claim that allowed it has ended.
type Authority interface {
	// Deadline is the instant from which no request may be sent. It may
	// move later while the claim is renewed.
	Deadline() time.Time
}

// Janitor removes a job's JetStream resources. It is safe for concurrent use.
type Janitor struct {
	js     jetstream.JetStream
	server Server
	names  Names
	retry  retrier
	now    func() time.Time
	abort  func()
}

// Option configures a [Janitor] or a [Store].
type Option func(*options)

type options struct {
	policy   RetryPolicy
	tracer   trace.Tracer
	observer RetryObserver
	now      func() time.Time
	server   Server
	abort    func()
}

// WithRetryPolicy replaces [DefaultRetryPolicy].
func WithRetryPolicy(p RetryPolicy) Option { return func(o *options) { o.policy = p } }

// WithTracer sets the tracer for action and attempt spans (default: no-op).
func WithTracer(t trace.Tracer) Option { return func(o *options) { o.tracer = t } }

// WithRetryObserver sets a callback for every retried failure.
func WithRetryObserver(f RetryObserver) Option { return func(o *options) { o.observer = f } }

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithServer replaces the JetStream calls that [Janitor.Remove] makes, for
// the model checker.
func WithServer(s Server) Option { return func(o *options) { o.server = s } }

// WithAbort sets what the janitor calls when a delete that got no reply is
// still in doubt as its retries end (see deleteOnce): it must discard the
// request if it has not left this process yet (close the connection
// abruptly), so that it can never reach the server later, after the claim's
// authority has ended. nil does nothing.
func WithAbort(abort func()) Option { return func(o *options) { o.abort = abort } }

func buildOptions(opts []Option) options {
	o := options{policy: DefaultRetryPolicy(), now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// NewJanitor returns a Janitor that acts through js on resources named by
// names. names must be valid (see [Names.Validate]).
func NewJanitor(js jetstream.JetStream, names Names, opts ...Option) *Janitor {
	o := buildOptions(opts)
	j := &Janitor{js: js, server: o.server, names: names, retry: newRetrier(o.policy, o.tracer, o.observer), now: o.now, abort: o.abort}
	if j.server == nil {
		j.server = jsServer{js: js}
	}
	if j.abort == nil {
		j.abort = func() {}
	}
	return j
}

// Names returns the naming patterns the Janitor acts on.
func (j *Janitor) Names() Names { return j.names }

// StreamName returns the job's task stream name.
func (j *Janitor) StreamName(id JobID) string { return j.names.StreamName(id) }

// Removal reports what [Janitor.Remove] found and did.
type Removal struct {
	// Stream is the job's task stream name.
	Stream string `json:"stream"`
	// StreamFound says whether the stream existed when it was looked at.
	StreamFound bool `json:"stream_found"`
	// Deleted lists what this call deleted, as "stream NAME" and
	// "consumer STREAM/NAME". The task consumer goes with its stream and is
	// listed when the stream had consumers at the lookup just before.
	Deleted []string `json:"deleted"`
	// Kept lists what was found but left alone, with the fence's reason.
	Kept []string `json:"kept,omitempty"`
	// MessagesDiscarded is how many messages the deleted stream held.
	MessagesDiscarded uint64 `json:"messages_discarded"`
	// ConsumersRemoved counts consumers deleted, including those that went
	// with the stream (as its lookup counted them).
	ConsumersRemoved int `json:"consumers_removed"`
	// Confirmed is [ConfirmedGoneOnRetry] when a delete's reply was lost
	// and a later attempt found the resource gone: the lost request removed
	// it, and the counts are those the fence read just before.
	Confirmed string `json:"confirmed,omitempty"`
	// Notes says what else happened, e.g. a stream that vanished between
	// the lookup and the delete (removed by someone else).
	Notes []string `json:"notes,omitempty"`
	// KeptLaterRun says that something in Kept is known to belong to a run
	// after the action's (a fence kept it), rather than kept for being in
	// use (an orphan's activity) or for want of a time to judge by.
	KeptLaterRun bool `json:"-"`
}

// ConfirmedGoneOnRetry marks a removal confirmed by absence: the first
// delete got no reply, and the retry found the resource gone.
const ConfirmedGoneOnRetry = "gone_on_retry"

// ConfirmedEarlierAttempt marks a removal credited to an earlier attempt at
// the same effect: it recorded the resource as about to be removed (with its
// creation time and contents) before its first destructive request, and a
// later attempt found it gone.
const ConfirmedEarlierAttempt = "earlier_attempt"

// Removed reports whether anything was deleted.
func (r Removal) Removed() bool { return len(r.Deleted) > 0 }

// Inspection is what the janitor read of a job's queue before judging it.
type Inspection struct {
	// Stream is the job's task stream name.
	Stream string
	// Info is the stream's info; nil when it does not exist.
	Info *jetstream.StreamInfo
}

// Inspect reads the job's task stream. It changes nothing, so a caller may
// send it beside the claim it serves (see the handlers package); auth, when
// not nil, bounds it like every request of an effect.
func (j *Janitor) Inspect(ctx context.Context, id JobID, auth Authority) (Inspection, error) {
	if !id.Valid() {
		return Inspection{}, fmt.Errorf("inspect: %w: %d", ErrInvalidJobID, id)
	}
	ins := Inspection{Stream: j.names.StreamName(id)}
	info, err := j.streamInfo(ctx, ins.Stream, auth)
	ins.Info = info
	return ins, err
}

// Plan is what a fence allows to be removed of a job's queue.
type Plan struct {
	// ID is the job.
	ID JobID
	// Stream is the job's task stream name; StreamFound says whether it
	// existed when inspected.
	Stream      string
	StreamFound bool
	// DropStream says the stream (and the task consumer that goes with it)
	// may be removed; Created, Messages and Consumers describe it as judged.
	DropStream bool
	Created    time.Time
	Messages   uint64
	Consumers  int
	// TaskConsumer is the job's task consumer's name.
	TaskConsumer string
	// Purge empties the stream before its delete (see Fence.PurgeFirst).
	Purge bool
	// Fence is the fence the plan was judged with; a retried delete of the
	// dead-letter consumer, not looked up, judges what it finds with it.
	Fence Fence
	// DropDeadLetter says the job's dead-letter consumer may be removed.
	// DeadLetterCreated is its creation time when it was looked up; zero
	// when it goes with the stream (the backend creates it after the
	// stream, for the same run).
	DropDeadLetter    bool
	DeadLetterCreated time.Time
	// Kept lists what was found but must stay, with the fence's reason;
	// KeptLaterRun says something in it is known to be a later run's.
	Kept         []string
	KeptLaterRun bool
}

// Empty reports whether the plan removes nothing.
func (p Plan) Empty() bool { return !p.DropStream && !p.DropDeadLetter }

// Plan judges ins with fence. When the stream is there and the fence allows
// it, the stream and the dead-letter consumer go together: the backend
// creates that consumer after the stream, for the same run, so it belongs to
// a run the fence allows too (and the caller's claim on the job keeps a
// later run from starting meanwhile). Otherwise the dead-letter consumer is
// looked up (a request bounded by auth) and fenced on its own.
func (j *Janitor) Plan(ctx context.Context, id JobID, ins Inspection, fence Fence, auth Authority) (Plan, error) {
	p := Plan{ID: id, Stream: ins.Stream, TaskConsumer: j.names.ConsumerName(id), Fence: fence}
	adv, dlq := j.names.AdvisoryStream, j.names.DeadLetterConsumerName(id)
	if s := ins.Info; s != nil {
		p.StreamFound = true
		ok, later, why := fence.judge(s.Created, s.Config.Metadata)
		p.KeptLaterRun = p.KeptLaterRun || later
		if ok && !fence.IdleSince.IsZero() {
			var err error
			if ok, why, err = j.idle(ctx, id, s, fence.IdleSince, auth); err != nil {
				return p, err
			}
		}
		if ok {
			p.DropStream, p.DropDeadLetter = true, true
			p.Created, p.Messages, p.Consumers = s.Created, s.State.Msgs, s.State.Consumers
			p.Purge = fence.PurgeFirst && s.State.Msgs > 0
			return p, nil
		}
		p.Kept = append(p.Kept, fmt.Sprintf("stream %s: %s", p.Stream, why))
	}
	dinfo, err := j.consumerInfo(ctx, adv, dlq, auth)
	if err != nil || dinfo == nil {
		return p, err
	}
	if ok, later, why := fence.judge(dinfo.Created, dinfo.Config.Metadata); ok {
		p.DropDeadLetter, p.DeadLetterCreated = true, dinfo.Created
	} else {
		p.KeptLaterRun = p.KeptLaterRun || later
		p.Kept = append(p.Kept, fmt.Sprintf("consumer %s/%s: %s", adv, dlq, why))
	}
	return p, nil
}

// Execute removes what plan allows: the task stream (its task consumer goes
// with it) and the job's dead-letter consumer on the shared advisory stream,
// which itself is never deleted. With plan.Purge the stream is emptied
// before it is deleted (see Fence.PurgeFirst): an emptied stream brings no
// messages back into the next run's. Resources already gone count as clean.
//
// Every request is sent only while auth allows, with a deadline no later than
// auth's; the purge and the delete are two requests, each checked. A delete
// that is retried first reads the resource again and deletes it only if it is
// still the one the plan judged (same server-side creation time); a delete
// whose reply was lost is reported as done when the retry finds the resource
// gone ([ConfirmedGoneOnRetry]).
//
// It returns [ErrAuthorityExpired] when auth ran out first, and otherwise the
// first error that retries did not overcome; the Removal then reports what
// was done.
func (j *Janitor) Execute(ctx context.Context, plan Plan, auth Authority) (Removal, error) {
	r := Removal{Stream: plan.Stream, StreamFound: plan.StreamFound, Deleted: []string{},
		Kept: append([]string(nil), plan.Kept...), KeptLaterRun: plan.KeptLaterRun}
	adv, dlq := j.names.AdvisoryStream, j.names.DeadLetterConsumerName(plan.ID)
	if plan.Empty() {
		return r, nil
	}
	var streamDone, dlqDone deletion
	err := both(
		func() (err error) {
			if plan.DropStream {
				streamDone, err = j.deleteStream(ctx, plan.Stream, plan.Created, plan.Purge, auth)
			}
			return err
		},
		func() (err error) {
			if plan.DropDeadLetter {
				dlqDone, err = j.deleteConsumer(ctx, adv, dlq, plan.DeadLetterCreated, plan.Fence, auth)
			}
			return err
		},
	)
	if streamDone.removed() {
		if plan.Consumers > 0 {
			// They went with the stream; the backend's one is the task consumer.
			r.Deleted = append(r.Deleted, "consumer "+r.Stream+"/"+plan.TaskConsumer)
			r.ConsumersRemoved += plan.Consumers
		}
		r.Deleted = append(r.Deleted, "stream "+r.Stream)
		r.MessagesDiscarded = plan.Messages
	}
	if dlqDone.removed() {
		r.Deleted = append(r.Deleted, "consumer "+adv+"/"+dlq)
		r.ConsumersRemoved++
	}
	r.note(streamDone, "stream "+r.Stream)
	r.note(dlqDone, "consumer "+adv+"/"+dlq)
	return r, err
}

// Remove inspects, plans and executes in one go: it deletes the job's task
// stream and dead-letter consumer as far as fence allows (see [Janitor.Plan]
// and [Janitor.Execute]). Two or three JetStream API calls for a job with a
// queue, one more when the stream holds messages.
func (j *Janitor) Remove(ctx context.Context, id JobID, fence Fence, auth Authority) (Removal, error) {
	ins, err := j.Inspect(ctx, id, auth)
	if err != nil {
		return Removal{Stream: j.names.StreamName(id), Deleted: []string{}}, err
	}
	plan, err := j.Plan(ctx, id, ins, fence, auth)
	if err != nil {
		return Removal{Stream: plan.Stream, StreamFound: plan.StreamFound, Deleted: []string{}, Kept: plan.Kept,
			KeptLaterRun: plan.KeptLaterRun}, err
	}
	return j.Execute(ctx, plan, auth)
}

// deletion is what became of one delete.
type deletion int

const (
	notTried    deletion = iota
	deleted              // the server answered that it deleted it
	goneOnRetry          // a reply was lost, and a retry found it gone
	vanished             // gone before any request of ours could have removed it
	replaced             // a retry found another resource of the same name: kept
)

func (d deletion) removed() bool { return d == deleted || d == goneOnRetry }

// note adds what a deletion says beyond Deleted.
func (r *Removal) note(d deletion, what string) {
	switch d {
	case goneOnRetry:
		r.Confirmed = ConfirmedGoneOnRetry
		r.Notes = append(r.Notes, what+": the delete's reply was lost; a retry found it gone")
	case vanished:
		r.Notes = append(r.Notes, what+": gone before this service's delete reached it (removed by someone else)")
	case replaced:
		r.Kept = append(r.Kept, what+": recreated since the fence judged it (another creation time): a later run's, kept")
		r.KeptLaterRun = true
	}
}

// both runs a and b concurrently and returns the first error.
func both(a, b func() error) error {
	errB := make(chan error, 1)
	go func() { errB <- b() }()
	errA := a()
	if err := <-errB; errA == nil {
		return err
	}
	return errA
}

// deleteStream deletes the stream the fence judged (created at created),
// emptying it first when purge is set.
func (j *Janitor) deleteStream(ctx context.Context, stream string, created time.Time, purge bool, auth Authority) (deletion, error) {
	attrs := []attribute.KeyValue{attribute.String("jetstream.stream", stream)}
	d, err := j.deleteOnce(ctx, "jetstream.delete_stream", attrs, auth,
		func(ctx context.Context) (found bool, same bool, err error) {
			info, err := j.server.StreamInfo(ctx, stream)
			if info == nil || err != nil {
				return false, false, err
			}
			return true, info.Created.Equal(created), nil
		},
		func(ctx context.Context) error {
			del := func(ctx context.Context) error { return j.server.DeleteStream(ctx, stream) }
			if !purge {
				return del(ctx)
			}
			if err := j.server.PurgeStream(ctx, stream); err != nil {
				return err
			}
			return j.authorized(ctx, auth, del) // a second request: a second check
		})
	if err != nil {
		return d, fmt.Errorf("delete stream %q: %w", stream, err)
	}
	return d, nil
}

// deleteConsumer deletes the consumer the fence judged (created at created;
// zero when it was not looked up, as when it goes with its job's stream: a
// retry then judges what it finds with the fence itself).
func (j *Janitor) deleteConsumer(ctx context.Context, stream, name string, created time.Time, fence Fence, auth Authority) (deletion, error) {
	attrs := []attribute.KeyValue{attribute.String("jetstream.stream", stream), attribute.String("jetstream.consumer", name)}
	d, err := j.deleteOnce(ctx, "jetstream.delete_consumer", attrs, auth,
		func(ctx context.Context) (found bool, same bool, err error) {
			info, err := j.server.ConsumerInfo(ctx, stream, name)
			if info == nil || err != nil {
				return false, false, err
			}
			if created.IsZero() {
				ok, _, _ := fence.judge(info.Created, info.Config.Metadata)
				return true, ok, nil
			}
			return true, info.Created.Equal(created), nil
		},
		func(ctx context.Context) error { return j.server.DeleteConsumer(ctx, stream, name) })
	if err != nil {
		return d, fmt.Errorf("delete consumer %q on stream %q: %w", name, stream, err)
	}
	return d, nil
}

// deleteOnce deletes one resource under auth, at most once in effect: a
// retry first re-reads the resource (lookup) and goes on only if it is still
// the one judged (same creation time, when known).
//
// A request that got no reply may still have been applied, or may still be
// on its way, held in a buffer by a network that lost its path: such a
// request must never reach the server after the claim's authority ends. It
// stays "in doubt" until a later request on the same connection is
// answered (the server reads a connection's requests in order, so the
// earlier one has then left the network), or the connection it went out on
// is gone (closed abortively: its unsent bytes are discarded). A request
// still in doubt when the retries end (the authority ran out, or the retry
// budget) has its connection closed at once. A slow server thus answers the
// retry's re-read and costs no reconnection; a partition does not, and its
// bytes are discarded. A retry that then finds the resource gone reports
// goneOnRetry.
func (j *Janitor) deleteOnce(ctx context.Context, op string, attrs []attribute.KeyValue, auth Authority,
	lookup func(context.Context) (found, same bool, err error), del func(context.Context) error) (deletion, error) {
	outcome, uncertain, inDoubt, attempt := notTried, false, false, 0
	gone := func() deletion {
		if uncertain {
			return goneOnRetry
		}
		return vanished
	}
	err := j.retry.do(ctx, op, attrs, func(ctx context.Context) error {
		attempt++
		if attempt > 1 {
			var found, same bool
			err := j.authorized(ctx, auth, func(ctx context.Context) (err error) {
				found, same, err = lookup(ctx)
				return err
			})
			if err != nil {
				return err
			}
			inDoubt = false // answered after it: the earlier request left the network
			if !found {
				outcome = gone()
				return nil
			}
			if !same {
				outcome = replaced
				return nil
			}
		}
		err := j.authorized(ctx, auth, del)
		switch {
		case errors.Is(err, ErrGone):
			outcome = gone()
			return nil
		case err == nil:
			outcome = deleted
			return nil
		case mayHaveReached(err):
			uncertain, inDoubt = true, true
		}
		return err
	})
	if inDoubt {
		j.abort()
	}
	return outcome, err
}

// authorized runs one request if auth still allows it, with a deadline no
// later than auth's.
func (j *Janitor) authorized(ctx context.Context, auth Authority, fn func(context.Context) error) error {
	if auth == nil {
		return fn(ctx)
	}
	deadline := auth.Deadline()
	if !j.now().Before(deadline) {
		return ErrAuthorityExpired
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	err := fn(ctx)
	if err != nil && !j.now().Before(deadline) {
		// Cut short by the authority's end, not by the server.
		return fmt.Errorf("%w (last request: %w)", ErrAuthorityExpired, err)
	}
	return err
}

// mayHaveReached reports whether a failed request may have been applied by
// the server: it left this process and no answer came back.
func mayHaveReached(err error) bool {
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrReconnectBufExceeded) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected) {
		return false // never sent, or nobody took it
	}
	var apiErr *jetstream.APIError
	return !errors.As(err, &apiErr) // an API error is the server's answer: not applied
}

// StreamInfo returns the stream's info, or nil and no error when it does
// not exist.
func (j *Janitor) StreamInfo(ctx context.Context, stream string) (*jetstream.StreamInfo, error) {
	return j.streamInfo(ctx, stream, nil)
}

func (j *Janitor) streamInfo(ctx context.Context, stream string, auth Authority) (*jetstream.StreamInfo, error) {
	var info *jetstream.StreamInfo
	attrs := []attribute.KeyValue{attribute.String("jetstream.stream", stream)}
	err := j.retry.do(ctx, "jetstream.stream_info", attrs, func(ctx context.Context) error {
		return j.authorized(ctx, auth, func(ctx context.Context) (err error) {
			info, err = j.server.StreamInfo(ctx, stream)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("stream info %q: %w", stream, err)
	}
	return info, nil
}

// ConsumerInfo returns the consumer's info, or nil and no error when it or
// its stream does not exist.
func (j *Janitor) ConsumerInfo(ctx context.Context, stream, consumer string) (*jetstream.ConsumerInfo, error) {
	return j.consumerInfo(ctx, stream, consumer, nil)
}

func (j *Janitor) consumerInfo(ctx context.Context, stream, consumer string, auth Authority) (*jetstream.ConsumerInfo, error) {
	var info *jetstream.ConsumerInfo
	attrs := []attribute.KeyValue{attribute.String("jetstream.stream", stream), attribute.String("jetstream.consumer", consumer)}
	err := j.retry.do(ctx, "jetstream.consumer_info", attrs, func(ctx context.Context) error {
		return j.authorized(ctx, auth, func(ctx context.Context) (err error) {
			info, err = j.server.ConsumerInfo(ctx, stream, consumer)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("consumer info %q on stream %q: %w", consumer, stream, err)
	}
	return info, nil
}

// idle re-checks, just before an orphan is deleted, that its queue shows no
// activity since since: nothing stored, delivered or acked after it, nothing
// awaiting an ack, no worker waiting on the task consumer.
func (j *Janitor) idle(ctx context.Context, id JobID, s *jetstream.StreamInfo, since time.Time, auth Authority) (bool, string, error) {
	if s.State.LastTime.After(since) {
		return false, fmt.Sprintf("a message was stored at %s, after the idle cut-off %s (idle check)", stamp(s.State.LastTime), stamp(since)), nil
	}
	c, err := j.consumerInfo(ctx, s.Config.Name, j.names.ConsumerName(id), auth)
	if err != nil || c == nil {
		return err == nil, "", err
	}
	if why := ConsumerActivity(c, since); why != "" {
		return false, why + " (idle check)", nil
	}
	return true, "", nil
}

// ConsumerActivity says why a task consumer is active since since, or ""
// when it is idle: a delivery or ack after since, tasks awaiting an ack (a
// worker busy on them), or workers waiting for tasks.
func ConsumerActivity(c *jetstream.ConsumerInfo, since time.Time) string {
	switch {
	case c.NumAckPending > 0:
		return fmt.Sprintf("%d tasks await a worker's ack", c.NumAckPending)
	case c.NumWaiting > 0:
		return fmt.Sprintf("%d workers wait for tasks", c.NumWaiting)
	case c.Delivered.Last != nil && c.Delivered.Last.After(since):
		return "a task was delivered at " + stamp(*c.Delivered.Last)
	case c.AckFloor.Last != nil && c.AckFloor.Last.After(since):
		return "a task was acked at " + stamp(*c.AckFloor.Last)
	case c.Created.After(since):
		return "the task consumer was created at " + stamp(c.Created)
	}
	return ""
}
