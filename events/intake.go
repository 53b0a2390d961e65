package events

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/example/queue-janitor/queue"
	"github.com/example/queue-janitor/telemetry"
)

// Decision is what the service decided to do with an event.
type Decision string

// The decisions, as they appear in logs, span attributes and metric labels.
const (
	DecisionCleanup    Decision = "cleanup"
	DecisionFlush      Decision = "flush"
	DecisionIgnore     Decision = "ignore"
	DecisionStale      Decision = "stale"
	DecisionDeadLetter Decision = "dead-letter"
)

// Outcome is a [Handler]'s account of one event, for the log line, the span
// and the metrics.
type Outcome struct {
	Decision Decision
	// Result is short and stable: one of the Outcome* constants, or e.g.
	// "recorded" for a status that only updates the record.
	Result string
	// Removal is set when the queue was acted on.
	Removal *queue.Removal
	// Note explains the decision in a few words, for the log.
	Note string
}

// Handler decides what an event means and carries it out. It returns an
// error wrapping [ErrInvalid] for an event that can never be handled, and any
// other error for a failure worth retrying later.
type Handler interface {
	Handle(ctx context.Context, ev JobStatus) (Outcome, error)
}

// IntakeConfig configures the durable event intake.
type IntakeConfig struct {
	// Stream is the event stream; Subject its subject pattern, ending in
	// ".*" where the status token goes (e.g. "job.status.*").
	Stream  string
	Subject string
	// Bind, when true, requires the stream to exist instead of creating it.
	Bind bool
	// Replicas and MaxAge apply when the stream is created.
	Replicas int
	MaxAge   time.Duration
	// Consumer is the durable pull consumer shared by every replica.
	Consumer string
	// MaxDeliver bounds deliveries of an event that keeps failing for a
	// reason of its own (a panic, a permission the service lacks); on the
	// last one it is dead-lettered instead of retried. The service counts
	// them itself: the server's consumer redelivers without limit, so an
	// event is never dropped by the server, and an event that fails only
	// because NATS is unavailable is retried until it succeeds.
	MaxDeliver int
	// AckWait is how long the server waits for an ack before redelivering
	// (the first step of the consumer's redelivery backoff).
	AckWait time.Duration
	// Concurrency bounds events in flight in this process.
	Concurrency int
	// EffectTimeout bounds the handling of one event, once started; a
	// shutdown does not cut it short.
	EffectTimeout time.Duration
	// ShutdownTimeout bounds the wait for in-flight events at shutdown.
	ShutdownTimeout time.Duration
	// MaxEventBytes bounds an event's size.
	MaxEventBytes int
	// MaxFuture bounds how far an event's time may lie ahead of when it
	// reached the event stream; later ones are dead-lettered.
	MaxFuture time.Duration
	// MaxPark bounds how long an event waits, parked without holding a
	// concurrency slot, for another claim on its job to end before it is
	// handed back to the server.
	MaxPark time.Duration
}

// DefaultIntakeConfig returns the contract's defaults.
func DefaultIntakeConfig() IntakeConfig {
	return IntakeConfig{
		Stream:          "JOB_EVENTS",
		Subject:         "job.status.*",
		Replicas:        1,
		MaxAge:          7 * 24 * time.Hour,
		Consumer:        "queue-janitor",
		MaxDeliver:      10,
		AckWait:         10 * time.Second,
		Concurrency:     32,
		EffectTimeout:   2 * time.Minute,
		ShutdownTimeout: 30 * time.Second,
		MaxEventBytes:   DefaultMaxEventBytes,
		MaxFuture:       DefaultMaxFuture,
		MaxPark:         2 * time.Minute,
	}
}

// Validate names the first bad field.
func (c IntakeConfig) Validate() error {
	switch {
	case c.Stream == "" || strings.ContainsAny(c.Stream, ".*> "):
		return fmt.Errorf("event stream name %q is not a valid stream name", c.Stream)
	case !strings.HasSuffix(c.Subject, ".*") || strings.Count(c.Subject, "*") != 1 || strings.Contains(c.Subject, ">"):
		return fmt.Errorf("event subject %q must end in .* (the status token) and have no other wildcard", c.Subject)
	case c.Consumer == "" || strings.ContainsAny(c.Consumer, ".*> "):
		return fmt.Errorf("consumer name %q is not a valid consumer name", c.Consumer)
	case c.MaxDeliver < 2:
		return fmt.Errorf("max deliver %d: must be at least 2 so that a failure can be retried", c.MaxDeliver)
	case c.AckWait < time.Second:
		return fmt.Errorf("ack wait %s: must be at least 1s", c.AckWait)
	case c.Concurrency < 1:
		return fmt.Errorf("concurrency %d: must be at least 1", c.Concurrency)
	case c.EffectTimeout <= 0 || c.ShutdownTimeout <= 0:
		return errors.New("effect and shutdown timeouts must be positive")
	case c.MaxEventBytes < 1024:
		return fmt.Errorf("max event bytes %d: must be at least 1024", c.MaxEventBytes)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("event stream replicas %d: must be 1 to 5", c.Replicas)
	case c.MaxFuture < 0:
		return fmt.Errorf("max event future %s: must not be negative (0 turns the check off)", c.MaxFuture)
	case c.MaxPark < 0:
		return fmt.Errorf("max park %s: must not be negative", c.MaxPark)
	}
	return nil
}

// SubjectPrefix is the part of Subject before the status token.
func (c IntakeConfig) SubjectPrefix() string { return strings.TrimSuffix(c.Subject, "*") }

// IntakeDeps are the collaborators of an [Intake].
type IntakeDeps struct {
	Logger  zerolog.Logger
	Tracer  trace.Tracer
	Metrics *telemetry.Metrics
}

// Intake reads job-status events from a durable JetStream consumer and feeds
// them to a Handler: concurrently up to a bound, one at a time per job. It
// settles each message in one place (settle): ack after the effect is done,
// NakWithDelay growing with the delivery count on failure, Term plus a dead
// letter for an invalid event or on the last allowed delivery.
type Intake struct {
	js      jetstream.JetStream
	cfg     IntakeConfig
	decoder Decoder
	handler Handler
	pub     *Publisher
	log     zerolog.Logger
	tracer  trace.Tracer
	metrics *telemetry.Metrics

	dispatch *dispatcher
	stopping atomic.Bool
	bound    atomic.Bool
	// lost is signaled when the server deleted the consumer; check when
	// it may have (the watcher then asks the server).
	lost  chan struct{}
	check chan struct{}
	// problem says why the consumer is not bound, for Ready.
	problem atomic.Pointer[string]
	// parked counts events waiting for another claim on their job; halt is
	// closed at shutdown to hand them back.
	parked   sync.WaitGroup
	parkMu   sync.Mutex // orders parked.Add before unpark's Wait
	halt     chan struct{}
	haltOnce sync.Once
	// born is when the event stream the intake is bound to was created
	// (server time, Unix nanoseconds): an event stored before it came from
	// a stream deleted since.
	born atomic.Int64
}

// NewIntake returns an Intake; call Run to start it.
func NewIntake(js jetstream.JetStream, cfg IntakeConfig, decoder Decoder, h Handler, pub *Publisher, deps IntakeDeps) *Intake {
	if deps.Tracer == nil {
		deps.Tracer = noop.NewTracerProvider().Tracer("")
	}
	if deps.Metrics == nil {
		deps.Metrics, _ = telemetry.NewMetrics(nil)
	}
	return &Intake{
		js: js, cfg: cfg, decoder: decoder, handler: h, pub: pub,
		log: deps.Logger, tracer: deps.Tracer, metrics: deps.Metrics,
		dispatch: newDispatcher(cfg.Concurrency),
		lost:     make(chan struct{}, 1),
		check:    make(chan struct{}, 1),
		halt:     make(chan struct{}),
	}
}

// Ready reports whether the consumer is bound and taking events; when it is
// not, the error says why and what is being done (e.g. the event stream was
// deleted and is being recreated, or awaited with Bind).
func (in *Intake) Ready(context.Context) error {
	if in.bound.Load() {
		return nil
	}
	if p := in.problem.Load(); p != nil {
		return errors.New(*p)
	}
	return errors.New("event consumer not bound")
}

// logBound says that events are being taken, or why none will arrive: a
// consumer paused on the server stays paused across restarts.
func (in *Intake) logBound(cons jetstream.Consumer) {
	info := cons.CachedInfo()
	if info != nil && info.Paused {
		in.log.Warn().Str("stream", in.cfg.Stream).Str("consumer", in.cfg.Consumer).
			Dur("paused_for_ms", info.PauseRemaining).
			Msg("event consumer is paused on the server: no events are delivered until it resumes " +
				"(nats consumer resume " + in.cfg.Stream + " " + in.cfg.Consumer + ")")
		return
	}
	in.log.Info().Str("stream", in.cfg.Stream).Str("consumer", in.cfg.Consumer).Msg("event consumer bound; taking events")
}

// Run ensures the event stream and consumer, then consumes until ctx is
// done. At shutdown it stops taking events, naks any it received but did not
// start, and waits up to ShutdownTimeout for events in flight; those still
// unfinished are redelivered later. It returns an error only when the stream
// or consumer cannot be set up at start. Should either be deleted on the
// server later, it notices within seconds (see [Intake.watch]), recreates
// what it created (with Bind, waits for the stream to exist again) and
// resumes; [Intake.Ready] says why meanwhile.
func (in *Intake) Run(ctx context.Context) error {
	// Effects outlive the run's cancellation (a shutdown lets them finish),
	// so they start from ctx's values without its cancellation.
	base := context.WithoutCancel(ctx)
	defer in.dispatch.close()
	cons, err := in.Ensure(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	for {
		cc, err := cons.Consume(func(msg jetstream.Msg) { in.receive(base, msg) },
			jetstream.PullMaxMessages(in.cfg.Concurrency),
			// Short pull requests: after a stream leader change the lost ones
			// are noticed (missed heartbeats) and renewed within seconds.
			jetstream.PullExpiry(pullExpiry),
			jetstream.ConsumeErrHandler(in.onConsumeError))
		if err == nil {
			in.problem.Store(nil)
			in.bound.Store(true)
			in.logBound(cons)
			if in.watch(ctx, cons) {
				in.shutdown(base, cc)
				return nil
			}
			in.bound.Store(false)
			cc.Stop()
		} else {
			in.setProblem(fmt.Sprintf("consume %s/%s: %v; retrying", in.cfg.Stream, in.cfg.Consumer, err))
		}
		if cons, err = in.recover(ctx, cons); err != nil {
			// Only ctx ends recovery: wait for the events still in flight.
			in.stopping.Store(true)
			in.unpark()
			wctx, cancel := context.WithTimeout(base, in.cfg.ShutdownTimeout)
			in.dispatch.wait(wctx)
			cancel()
			return nil
		}
	}
}

func (in *Intake) shutdown(ctx context.Context, cc jetstream.ConsumeContext) {
	in.stopping.Store(true)
	in.bound.Store(false)
	cc.Drain()
	ctx, cancel := context.WithTimeout(ctx, in.cfg.ShutdownTimeout)
	defer cancel()
	select {
	case <-cc.Closed():
	case <-ctx.Done():
	}
	in.unpark()
	if !in.dispatch.wait(ctx) {
		in.log.Warn().Dur("waited_ms", in.cfg.ShutdownTimeout).
			Msg("shutdown: events still in flight; they were not acked and will be redelivered")
	}
}

func (in *Intake) onConsumeError(_ jetstream.ConsumeContext, err error) {
	switch {
	case errors.Is(err, jetstream.ErrConsumerDeleted):
		in.signal(in.lost)
		return
	case errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrNoResponders):
		// Maybe gone: the watcher asks the server now.
		in.signal(in.check)
	}
	if in.stopping.Load() {
		return
	}
	in.log.Debug().Err(err).Msg("event consumer")
}

// Ensure creates or binds the event stream and the durable consumer. With
// Bind, a missing stream is an error.
func (in *Intake) Ensure(ctx context.Context) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := in.ensureStream(ctx); err != nil {
		return nil, err
	}
	return in.ensureConsumer(ctx)
}

// pullExpiry bounds each pull request; its heartbeat is half of it.
const pullExpiry = 5 * time.Second

// redeliveryBackoff is the consumer's wait before redelivering an event that
// was never acked (its handler crashed): AckWait, then doubling, up to 10m.
func redeliveryBackoff(ackWait time.Duration, maxDeliver int) []time.Duration {
	if maxDeliver < 2 {
		return nil // unlimited (-1) or no redelivery: AckWait alone applies
	}
	n := min(maxDeliver-1, 6)
	out := make([]time.Duration, 0, n)
	for d := ackWait; len(out) < n; d *= 2 {
		out = append(out, min(d, 10*time.Minute))
	}
	return out
}

// nakDelay is the wait before retrying an event whose handling failed: 1s,
// doubling with each delivery, at most one minute.
func nakDelay(delivered uint64) time.Duration {
	d := time.Second
	for i := uint64(1); i < delivered && d < time.Minute; i++ {
		d *= 2
	}
	return min(d, time.Minute)
}

func (in *Intake) receive(base context.Context, msg jetstream.Msg) {
	if in.stopping.Load() {
		// Taken from the buffer after shutdown began: hand it straight back.
		_ = msg.Nak()
		return
	}
	received := time.Now()
	// Decoding does no I/O (sdk-go's ToEvent ignores the context it is given).
	ev, err := in.decoder.Decode(msg.Subject(), msg.Headers(), msg.Data()) //nolint:contextcheck // no I/O
	if err == nil {
		if meta, merr := msg.Metadata(); merr == nil {
			ev.Stored = meta.Timestamp
		}
		err = checkFuture(ev, ev.Stored, in.cfg.MaxFuture)
	}
	key := ""
	if err == nil {
		key = ev.JobID.String()
	}
	in.dispatch.submit(key, func() { in.process(base, msg, ev, err, received, 0) })
}

// ResultLostWithStream is the result of an event received before its event
// stream was deleted: not acted on.
const ResultLostWithStream = "lost_with_stream"

// fromDeletedStream reports whether ev reached an event stream older than
// the one the intake is bound to now.
func (in *Intake) fromDeletedStream(ev JobStatus) bool {
	born := in.born.Load()
	return born != 0 && !ev.Stored.IsZero() && ev.Stored.UnixNano() < born
}

// storedAt is ev with its arrival at the event stream set from the
// message's metadata when decoding failed (a malformed event too can
// outlive its stream).
func storedAt(ev JobStatus, meta *jetstream.MsgMetadata) JobStatus {
	if ev.Stored.IsZero() && meta != nil {
		ev.Stored = meta.Timestamp
	}
	return ev
}

// inCurrentStream reports whether the event stream the intake is bound to
// now holds msg at its sequence: the same message (its time and subject),
// not another that took its sequence in a stream created since. Without
// the grant to read a message, it judges by the stream's creation time
// instead. When it cannot tell, it says no: a message of the current stream
// left unsettled is delivered again.
func (in *Intake) inCurrentStream(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) bool {
	if meta == nil {
		return false
	}
	st, err := in.js.Stream(ctx, in.cfg.Stream)
	if err != nil {
		return false
	}
	raw, err := st.GetMsg(ctx, meta.Sequence.Stream)
	switch {
	case err == nil:
		return raw.Time.Equal(meta.Timestamp) && raw.Subject == msg.Subject()
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return false
	}
	return !meta.Timestamp.Before(st.CachedInfo().Created)
}

// process handles one message: it opens the consumer span (continuing the
// producer's trace), runs the handler unless decoding failed, then settles.
// parked is how long the event has already waited for its job.
func (in *Intake) process(base context.Context, msg jetstream.Msg, ev JobStatus, decodeErr error, received time.Time, parked time.Duration) {
	ctx, cancel := context.WithTimeout(base, in.cfg.EffectTimeout)
	defer cancel()
	ctx = telemetry.WithRemoteParent(ctx, ev.TraceParent, ev.TraceState)
	meta, _ := msg.Metadata()
	var delivered uint64 = 1
	if meta != nil {
		delivered = meta.NumDelivered
	}
	ctx, span := in.tracer.Start(ctx, "process "+msg.Subject(), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			semconv.MessagingSystemKey.String("nats"),
			semconv.MessagingDestinationName(msg.Subject()),
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingOperationName("process"),
			semconv.MessagingConsumerGroupName(in.cfg.Consumer),
			semconv.MessagingMessageBodySize(len(msg.Data())),
			attribute.Int64("messaging.nats.message.delivery_count", int64(delivered)),
		))
	defer span.End()
	if decodeErr == nil {
		span.SetAttributes(
			semconv.MessagingMessageID(ev.ID),
			attribute.String("cloudevents.event_id", ev.ID),
			attribute.String("cloudevents.event_type", ev.Type),
			attribute.String("cloudevents.event_source", ev.Source),
			attribute.Int64("job.id", int64(ev.JobID)),
			attribute.String("job.status", string(ev.Status)),
		)
		if ev.HasAttempt {
			span.SetAttributes(attribute.Int64("job.attempt", ev.Attempt))
		}
	}

	var out Outcome
	err := decodeErr
	switch {
	case err == nil && in.fromDeletedStream(ev):
		// Received before its stream was deleted (parked, or buffered):
		// the records were rebuilt from the new stream, which does not hold
		// it nor what followed it, so it is not acted on. Events not yet
		// handled when their stream is deleted are lost.
		out = Outcome{Decision: DecisionIgnore, Result: ResultLostWithStream,
			Note: "the event stream it came from was deleted since; not acted on"}
	case err == nil:
		stop := in.keepAlive(msg)
		out, err = in.handle(ctx, ev)
		stop()
	}
	var busy retryAfter
	if errors.As(err, &busy) && parked < in.cfg.MaxPark && !in.stopping.Load() {
		in.park(base, span, msg, ev, received, parked, busy)
		return
	}
	in.settle(ctx, span, msg, meta, ev, out, err, received)
}

// park holds an event whose job another claim is acting on, without a
// concurrency slot, until that claim's lease ends; then it is handled again.
// The server is told it is in progress meanwhile; a shutdown hands it back.
func (in *Intake) park(base context.Context, span trace.Span, msg jetstream.Msg, ev JobStatus, received time.Time,
	parked time.Duration, busy retryAfter) {
	// The holder usually finishes in milliseconds and gives the lease back:
	// look again soon, backing off, and at the latest when the lease ends.
	poll := min(max(parked, parkFirstPoll), parkMaxPoll)
	wait := min(max(busy.RetryAfterDelay(), 0)+parkSlack, poll, in.cfg.MaxPark-parked)
	span.SetAttributes(attribute.String("queue_janitor.result", "parked"),
		attribute.Int64("queue_janitor.parked_ms", wait.Milliseconds()))
	in.log.Debug().Int64("job_id", int64(ev.JobID)).Str("event_id", ev.ID).Str("status", string(ev.Status)).
		Int64("park_ms", wait.Milliseconds()).Str("reason", busy.Error()).Msg("event parked: another claim holds its job")
	in.parkMu.Lock()
	if in.stopping.Load() {
		in.parkMu.Unlock()
		_ = msg.Nak()
		return
	}
	in.parked.Add(1)
	in.parkMu.Unlock()
	go func() {
		defer in.parked.Done()
		stop := in.keepAlive(msg)
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-in.halt:
			stop()
			_ = msg.Nak()
			return
		case <-t.C:
		}
		stop()
		in.dispatch.submit(ev.JobID.String(), func() { in.process(base, msg, ev, nil, received, parked+wait) })
	}()
}

// unpark hands every parked event back to the server at once and waits
// until they are; no event is parked after it.
func (in *Intake) unpark() {
	in.parkMu.Lock()
	in.haltOnce.Do(func() { close(in.halt) })
	in.parkMu.Unlock()
	in.parked.Wait()
}

// parkSlack is added to a lease's remaining time before trying again, so
// that the retry finds it ended. A parked event looks again after
// parkFirstPoll, then after as long as it has waited so far, at most
// parkMaxPoll.
const (
	parkSlack     = 100 * time.Millisecond
	parkFirstPoll = 50 * time.Millisecond
	parkMaxPoll   = 2 * time.Second
)

// handle runs the handler, turning a panic into an error so that it is
// retried (and eventually dead-lettered) rather than fatal.
func (in *Intake) handle(ctx context.Context, ev JobStatus) (out Outcome, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panic: %v\n%s", r, debug.Stack())
		}
	}()
	return in.handler.Handle(ctx, ev)
}

// keepAlive tells the server the event is still being worked on, so that a
// long effect is not redelivered to another replica meanwhile.
func (in *Intake) keepAlive(msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(in.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done) }
}

// settle is the one place where a message is acked, nak'ed or terminated,
// and where the event's log line, metrics and span status are written.
func (in *Intake) settle(ctx context.Context, span trace.Span, msg jetstream.Msg, meta *jetstream.MsgMetadata,
	ev JobStatus, out Outcome, err error, received time.Time) {
	// Settling has its own deadline: the effect's may have run out, and a
	// dead letter must still be published and the message settled.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	var delivered uint64 = 1
	if meta != nil {
		delivered = meta.NumDelivered
	}
	// An event that fails only because NATS or a claim is in the way is
	// retried until it succeeds; only a failure of its own uses up its
	// deliveries.
	lastTry := in.cfg.MaxDeliver > 0 && delivered >= uint64(in.cfg.MaxDeliver) && !retryable(err)
	var invalidErr *InvalidError
	level := zerolog.InfoLevel
	var settleErr error
	switch {
	case (out.Result == ResultLostWithStream || in.fromDeletedStream(storedAt(ev, meta))) && !in.inCurrentStream(ctx, msg, meta):
		// Its stream is gone: there is nothing to settle, and an ack, a nak
		// or a termination would land on the stream that replaced it, at
		// the same sequence (the server knows a message only by stream
		// name, consumer name and sequence): a new event acknowledged
		// unhandled, or terminated.
		if out.Result == "" {
			out.Result = ResultLostWithStream
		}
		out.Note = strings.TrimPrefix(out.Note+"; not settled: its event stream was replaced", "; ")
		level = zerolog.WarnLevel
	case err == nil:
		settleErr = msg.Ack()
	case errors.Is(err, ErrInvalid) || lastTry:
		reason, detail := ReasonRetriesExhausted, err.Error()
		switch {
		case errors.As(err, &invalidErr):
			reason, detail = invalidErr.Reason, invalidErr.Detail
		case errors.Is(err, ErrInvalid):
			reason = ReasonRejected
		}
		out = Outcome{Decision: DecisionDeadLetter, Result: string(reason)}
		if dlErr := in.deadLetter(ctx, msg, meta, ev, reason, detail); dlErr != nil {
			// Never drop an event we could not record: retry it later (the
			// server redelivers without limit; see MaxDeliver).
			out.Result = "retry"
			err = fmt.Errorf("%w (dead-letter failed, will retry: %w)", err, dlErr)
			settleErr = msg.NakWithDelay(nakDelay(delivered))
			level = zerolog.ErrorLevel
		} else {
			settleErr = msg.TermWithReason(string(reason))
			in.metrics.DeadLettered(ctx, string(reason))
			level = zerolog.WarnLevel
			if reason == ReasonRetriesExhausted {
				level = zerolog.ErrorLevel
			}
		}
	default:
		if out.Decision == "" {
			out.Decision = decisionFor(ev)
		}
		out.Result = "retry"
		delay := nakDelay(delivered)
		var busy retryAfter
		if errors.As(err, &busy) {
			delay = max(busy.RetryAfterDelay(), 0) + parkSlack
		}
		settleErr = msg.NakWithDelay(delay)
		level = zerolog.WarnLevel
	}

	took := time.Since(received)
	var lag time.Duration
	if !ev.Time.IsZero() {
		lag = time.Since(ev.Time)
	}
	status := string(ev.Status)
	if status == "" {
		status = "invalid"
	}
	in.metrics.EventHandled(ctx, status, string(out.Decision), out.Result, took, lag)
	if out.Removal != nil && (out.Decision == DecisionCleanup || out.Decision == DecisionFlush) {
		in.metrics.Discarded(ctx, string(out.Decision), out.Removal.MessagesDiscarded)
	}
	span.SetAttributes(attribute.String("queue_janitor.decision", string(out.Decision)),
		attribute.String("queue_janitor.result", out.Result))
	if r := out.Removal; r != nil {
		// What was deleted and why, on the event's one span.
		span.SetAttributes(attribute.StringSlice("queue_janitor.deleted", r.Deleted),
			attribute.Int64("queue_janitor.messages_discarded", int64(min(r.MessagesDiscarded, 1<<62))))
		if len(r.Kept) > 0 {
			span.SetAttributes(attribute.StringSlice("queue_janitor.kept", r.Kept))
		}
		if r.Confirmed != "" {
			span.SetAttributes(attribute.String("queue_janitor.confirmed", r.Confirmed))
		}
	}
	if out.Note != "" {
		span.SetAttributes(attribute.String("queue_janitor.note", out.Note))
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}

	in.log.WithLevel(level).Ctx(ctx).Func(func(e *zerolog.Event) {
		logFields(e, msg, meta, ev, out, delivered)
		if err != nil {
			e.Err(err)
		}
		if settleErr != nil {
			e.AnErr("settle_error", settleErr)
		}
		e.Float64("duration_ms", float64(took.Microseconds())/1000)
	}).Msg("event handled")
}

// logFields writes the fixed fields of an event's log line.
func logFields(e *zerolog.Event, msg jetstream.Msg, meta *jetstream.MsgMetadata, ev JobStatus, out Outcome, delivered uint64) {
	e.Str("subject", msg.Subject()).Uint64("delivery", delivered)
	if meta != nil {
		e.Uint64("stream_seq", meta.Sequence.Stream)
	}
	if ev.JobID.Valid() {
		e.Int64("job_id", int64(ev.JobID)).Str("status", string(ev.Status)).Str("event_id", ev.ID)
		if ev.HasAttempt {
			e.Int64("attempt", ev.Attempt)
		}
		if ev.Actor != "" {
			e.Str("actor", ev.Actor)
		}
	} else if ev.ID != "" {
		e.Str("event_id", ev.ID) // an invalid event's id, when it could be read
	}
	e.Str("decision", string(out.Decision)).Str("result", out.Result)
	if r := out.Removal; r != nil {
		e.Str("stream", r.Stream).Strs("deleted", r.Deleted).Uint64("messages_discarded", r.MessagesDiscarded).
			Int("consumers_removed", r.ConsumersRemoved)
		if len(r.Kept) > 0 {
			e.Strs("kept", r.Kept)
		}
	}
	if out.Note != "" {
		e.Str("note", out.Note)
	}
}

func (in *Intake) deadLetter(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, ev JobStatus, reason Reason, detail string) error {
	orig := NewOriginal(msg.Subject(), msg.Headers(), msg.Data(), in.cfg.MaxEventBytes)
	if meta != nil {
		orig.Stream, orig.Sequence, orig.Delivered = meta.Stream, meta.Sequence.Stream, meta.NumDelivered
	}
	jobID := ""
	if ev.JobID.Valid() {
		jobID = ev.JobID.String()
	}
	return in.pub.DeadLetter(ctx, jobID, DeadLetter{Reason: reason, Detail: detail, Original: orig})
}

// settleTimeout bounds settling one message: the dead letter and the ack.
const settleTimeout = 10 * time.Second

// retryable reports whether err says the event can succeed later without
// any change to it: NATS unavailable, a claim in the way, an authority that
// ran out.
func retryable(err error) bool {
	var busy retryAfter
	return err != nil && !errors.Is(err, ErrInvalid) && (queue.IsTransient(err) || errors.As(err, &busy) ||
		errors.Is(err, queue.ErrAuthorityExpired) || errors.Is(err, queue.ErrLeaseLost))
}

// decisionFor names the decision an event would get, for failures that
// happened before the handler could say.
func decisionFor(ev JobStatus) Decision {
	if ev.Status == StatusRestartRequested {
		return DecisionFlush
	}
	return DecisionCleanup
}
