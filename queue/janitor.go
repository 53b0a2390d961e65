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

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// ErrAuthorityExpired is returned by [Janitor.Remove] when the caller's right
// to act ([Fence.ValidUntil]) ran out before a delete could be sent. Nothing
// more was deleted; the caller should decide again from fresh state.
var ErrAuthorityExpired = errors.New("authority to act on the queue expired")

// Janitor removes a job's JetStream resources. It is safe for concurrent use.
type Janitor struct {
	js    jetstream.JetStream
	names Names
	retry retrier
	now   func() time.Time
}

// Option configures a [Janitor] or a [Store].
type Option func(*options)

type options struct {
	policy   RetryPolicy
	tracer   trace.Tracer
	observer RetryObserver
	now      func() time.Time
}

// WithRetryPolicy replaces [DefaultRetryPolicy].
func WithRetryPolicy(p RetryPolicy) Option { return func(o *options) { o.policy = p } }

// WithTracer sets the tracer for action and attempt spans (default: no-op).
func WithTracer(t trace.Tracer) Option { return func(o *options) { o.tracer = t } }

// WithRetryObserver sets a callback for every retried failure.
func WithRetryObserver(f RetryObserver) Option { return func(o *options) { o.observer = f } }

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

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
	return &Janitor{js: js, names: names, retry: newRetrier(o.policy, o.tracer, o.observer), now: o.now}
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
}

// Removed reports whether anything was deleted.
func (r Removal) Removed() bool { return len(r.Deleted) > 0 }

// Remove deletes the job's task stream (its task consumer goes with it) and
// its dead-letter consumer on the shared advisory stream, each only if fence
// allows it. The shared advisory stream itself is never deleted. Resources
// that are already gone count as clean.
//
// When the stream is there and the fence allows it, the stream and the
// dead-letter consumer are deleted together: the backend creates that
// consumer after the stream, for the same run, so it belongs to a run the
// fence allows too (and the caller's lease on the job keeps a later run from
// starting meanwhile). Otherwise the dead-letter consumer is looked up and
// fenced on its own. Three JetStream API calls for a job with a queue.
//
// It returns [ErrAuthorityExpired] when fence.ValidUntil passed before the
// deletes, and otherwise the first error that retries did not overcome; the
// Removal then reports what was done.
func (j *Janitor) Remove(ctx context.Context, id JobID, fence Fence) (Removal, error) {
	if !id.Valid() {
		return Removal{}, fmt.Errorf("remove: %w: %d", ErrInvalidJobID, id)
	}
	r := Removal{Stream: j.names.StreamName(id), Deleted: []string{}}
	adv, dlq := j.names.AdvisoryStream, j.names.DeadLetterConsumerName(id)

	sinfo, err := j.StreamInfo(ctx, r.Stream)
	if err != nil {
		return r, err
	}
	dropStream, dropDLQ := false, false
	if sinfo != nil {
		r.StreamFound = true
		if ok, why := fence.Allows(sinfo.Created, sinfo.Config.Metadata); ok {
			dropStream, dropDLQ = true, true
		} else {
			r.Kept = append(r.Kept, fmt.Sprintf("stream %s: %s", r.Stream, why))
		}
	}
	if !dropStream {
		dinfo, err := j.ConsumerInfo(ctx, adv, dlq)
		if err != nil {
			return r, err
		}
		if dinfo != nil {
			if ok, why := fence.Allows(dinfo.Created, dinfo.Config.Metadata); ok {
				dropDLQ = true
			} else {
				r.Kept = append(r.Kept, fmt.Sprintf("consumer %s/%s: %s", adv, dlq, why))
			}
		}
	}
	if !dropStream && !dropDLQ {
		return r, nil
	}
	if err := j.checkAuthority(fence); err != nil {
		return r, err
	}
	var streamGone, dlqDeleted bool
	err = both(
		func() (err error) {
			if dropStream {
				streamGone, err = j.deleteStream(ctx, r.Stream)
			}
			return err
		},
		func() (err error) {
			if dropDLQ {
				dlqDeleted, err = j.deleteConsumer(ctx, adv, dlq)
			}
			return err
		},
	)
	if dropStream && streamGone {
		if n := sinfo.State.Consumers; n > 0 {
			// They went with the stream; the backend's one is the task consumer.
			r.Deleted = append(r.Deleted, "consumer "+r.Stream+"/"+j.names.ConsumerName(id))
			r.ConsumersRemoved += n
		}
		r.Deleted = append(r.Deleted, "stream "+r.Stream)
		r.MessagesDiscarded = sinfo.State.Msgs
	}
	if dlqDeleted {
		r.Deleted = append(r.Deleted, "consumer "+adv+"/"+dlq)
		r.ConsumersRemoved++
	}
	return r, err
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

// deleteStream deletes a stream; false means it was already gone.
func (j *Janitor) deleteStream(ctx context.Context, stream string) (bool, error) {
	attrs := []attribute.KeyValue{attribute.String("jetstream.stream", stream)}
	deleted := true
	err := j.retry.do(ctx, "jetstream.delete_stream", attrs, func(ctx context.Context) error {
		err := j.js.DeleteStream(ctx, stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			deleted = false
			return nil
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("delete stream %q: %w", stream, err)
	}
	return deleted, nil
}

// deleteConsumer deletes one consumer; false means it was already gone.
func (j *Janitor) deleteConsumer(ctx context.Context, stream, name string) (bool, error) {
	attrs := []attribute.KeyValue{attribute.String("jetstream.stream", stream), attribute.String("jetstream.consumer", name)}
	deleted := true
	err := j.retry.do(ctx, "jetstream.delete_consumer", attrs, func(ctx context.Context) error {
		err := j.js.DeleteConsumer(ctx, stream, name)
		if isGone(err) {
			deleted = false
			return nil
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("delete consumer %q on stream %q: %w", name, stream, err)
	}
	return deleted, nil
}

// StreamInfo returns the stream's info, or nil and no error when it does
// not exist.
func (j *Janitor) StreamInfo(ctx context.Context, stream string) (*jetstream.StreamInfo, error) {
	var info *jetstream.StreamInfo
	attrs := []attribute.KeyValue{attribute.String("jetstream.stream", stream)}
	err := j.retry.do(ctx, "jetstream.stream_info", attrs, func(ctx context.Context) error {
		s, err := j.js.Stream(ctx, stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			info = nil
			return nil
		}
		if err != nil {
			return err
		}
		info = s.CachedInfo()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("stream info %q: %w", stream, err)
	}
	return info, nil
}

// ConsumerInfo returns the consumer's info, or nil and no error when it or
// its stream does not exist.
func (j *Janitor) ConsumerInfo(ctx context.Context, stream, consumer string) (*jetstream.ConsumerInfo, error) {
	var info *jetstream.ConsumerInfo
	attrs := []attribute.KeyValue{attribute.String("jetstream.stream", stream), attribute.String("jetstream.consumer", consumer)}
	err := j.retry.do(ctx, "jetstream.consumer_info", attrs, func(ctx context.Context) error {
		c, err := j.js.Consumer(ctx, stream, consumer)
		if isGone(err) {
			info = nil
			return nil
		}
		if err != nil {
			return err
		}
		info = c.CachedInfo()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("consumer info %q on stream %q: %w", consumer, stream, err)
	}
	return info, nil
}

func (j *Janitor) checkAuthority(fence Fence) error {
	if !fence.ValidUntil.IsZero() && !j.now().Before(fence.ValidUntil) {
		return ErrAuthorityExpired
	}
	return nil
}

// isGone reports whether err says the consumer or its stream does not exist.
func isGone(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
}
