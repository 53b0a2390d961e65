package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// RetryPolicy bounds how a JetStream call is retried when it fails with a
// transient error (see [IsTransient]). Permanent errors are never retried.
type RetryPolicy struct {
	// Initial is the first backoff interval.
	Initial time.Duration
	// Max caps a single backoff interval.
	Max time.Duration
	// MaxElapsed caps the total time spent on one call, retries included.
	MaxElapsed time.Duration
	// AttemptTimeout is the deadline of each attempt.
	AttemptTimeout time.Duration
}

// DefaultRetryPolicy suits a JetStream server on the same network: a leader
// election (a few seconds) is ridden out, a dead server is given up on after
// 30 s so that the event is redelivered later instead of holding a worker.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{
		Initial:        50 * time.Millisecond,
		Max:            2 * time.Second,
		MaxElapsed:     30 * time.Second,
		AttemptTimeout: 5 * time.Second,
	}
}

// Validate names the first unusable field.
func (p RetryPolicy) Validate() error {
	switch {
	case p.Initial <= 0:
		return errors.New("retry initial interval must be positive")
	case p.Max < p.Initial:
		return errors.New("retry max interval must be at least the initial interval")
	case p.MaxElapsed <= 0:
		return errors.New("retry max elapsed time must be positive")
	case p.AttemptTimeout <= 0:
		return errors.New("retry attempt timeout must be positive")
	}
	return nil
}

// RetryObserver is told about every failed attempt that will be retried. It
// is how retries reach metrics; it must be cheap and safe for concurrent use.
type RetryObserver func(ctx context.Context, op string, attempt int, err error, wait time.Duration)

// transientCodes are JetStream error codes that a later attempt can clear:
// leader elections, offline assets, incomplete cluster answers.
var transientCodes = map[jetstream.ErrorCode]bool{
	10004: true, // incomplete results
	10008: true, // JetStream system temporarily unavailable
	10009: true, // cluster can not handle request (not leader)
	10118: true, // stream is offline
	10119: true, // consumer is offline
	10194: true, // stream is offline: reason
	10195: true, // consumer is offline: reason
}

// IsTransient reports whether err may go away on its own: timeouts, no
// responders, a reconnecting connection, and JetStream's 503 answers
// (including 10008 while a cluster elects a leader). A closed connection, a
// permission error, a bad request and an expired authority
// ([ErrAuthorityExpired]) are permanent.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrConnectionClosed) ||
		errors.Is(err, context.Canceled) || errors.Is(err, ErrAuthorityExpired) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrReconnectBufExceeded) ||
		errors.Is(err, jetstream.ErrServerShutdown) || errors.Is(err, jetstream.ErrConsumerLeadershipChanged) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code == 503 || apiErr.Code == 408 || transientCodes[apiErr.ErrorCode] || streamClosing(apiErr)
	}
	return false
}

// streamClosing reports whether the server refused a request because the
// stream is being deleted meanwhile (by another client): a retry reads it
// again and finds it gone.
func streamClosing(e *jetstream.APIError) bool {
	return e.ErrorCode == 10051 && strings.Contains(e.Description, "stream closed")
}

// retrier runs one JetStream call under a [RetryPolicy], traced.
//
// A call made inside a recording span (an event's `process` span, the
// reconciler's span for one job) is recorded on that span as a span event
// named after the call, with its attributes, retry.attempts and duration_ms
// (and error when it failed in the end); each failed attempt adds an event
// "<op> failed" with retry.attempt and the error. One span per event thus
// tells the whole story at a fraction of the cost of a span per call. A
// call made outside any span (background checks) gets a client span of its
// own, its failed attempts recorded on it the same way.
type retrier struct {
	policy   RetryPolicy
	tracer   trace.Tracer
	observer RetryObserver
}

func newRetrier(policy RetryPolicy, tracer trace.Tracer, observer RetryObserver) retrier {
	if tracer == nil {
		tracer = noop.NewTracerProvider().Tracer("")
	}
	if observer == nil {
		observer = func(context.Context, string, int, error, time.Duration) {}
	}
	return retrier{policy: policy, tracer: tracer, observer: observer}
}

// do calls fn until it succeeds, fails permanently, or the policy's time is
// up. fn gets a context with the per-attempt deadline. The returned error is
// fn's last error, wrapped with op.
func (r retrier) do(ctx context.Context, op string, attrs []attribute.KeyValue, fn func(context.Context) error) error {
	span := trace.SpanFromContext(ctx)
	own := !span.IsRecording()
	if own {
		ctx, span = r.tracer.Start(ctx, op, trace.WithAttributes(attrs...), trace.WithSpanKind(trace.SpanKindClient))
		defer span.End()
	}
	started := time.Now()

	b := backoff.NewExponentialBackOff()
	b.InitialInterval = r.policy.Initial
	b.MaxInterval = r.policy.Max
	b.MaxElapsedTime = r.policy.MaxElapsed
	b.RandomizationFactor = 0.5

	attempt := 0
	operation := func() error {
		attempt++
		actx, cancel := context.WithTimeout(ctx, r.policy.AttemptTimeout)
		err := fn(actx)
		cancel()
		if err != nil && span.IsRecording() {
			span.AddEvent(op+" failed", trace.WithAttributes(attribute.Int("retry.attempt", attempt),
				attribute.String("error", err.Error())))
		}
		if err != nil && !IsTransient(err) {
			return backoff.Permanent(err)
		}
		return err
	}
	notify := func(err error, wait time.Duration) { r.observer(ctx, op, attempt, err, wait) }
	err := backoff.RetryNotify(operation, backoff.WithContext(b, ctx), notify)
	switch {
	case own:
		span.SetAttributes(attribute.Int("retry.attempts", attempt))
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
	case span.IsRecording():
		ev := make([]attribute.KeyValue, 0, len(attrs)+3)
		ev = append(append(ev, attrs...), attribute.Int("retry.attempts", attempt),
			attribute.Float64("duration_ms", float64(time.Since(started).Microseconds())/1000))
		if err != nil {
			ev = append(ev, attribute.String("error", err.Error()))
		}
		span.AddEvent(op, trace.WithAttributes(ev...))
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}
