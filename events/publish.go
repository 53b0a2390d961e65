package events

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/example/queue-janitor/queue"
	"github.com/example/queue-janitor/telemetry"
)

// The types of the events queue-janitor emits.
const (
	TypeCleaned    = "job.queue.cleaned"
	TypeFlushed    = "job.queue.flushed"
	TypeDeadLetter = "job.deadletter.status"
)

// confirmTimeout bounds the wait for the server to confirm a dead letter or
// a cleaned answer.
const confirmTimeout = 5 * time.Second

// confirmation is how a publish knows that it reached the server.
type confirmation int

const (
	// notConfirmed: published on core NATS, not waited for.
	notConfirmed confirmation = iota
	// flushed: published on core NATS and confirmed by a flush (the
	// server has processed it: its subscribers present got it).
	flushed
	// kept: acknowledged by the stream capturing its subject if one does,
	// otherwise flushed.
	kept
)

// ReasonHeader carries a dead-letter's [Reason] on the NATS message.
const ReasonHeader = "Queue-Janitor-Reason"

// ContentTypeCloudEventsJSON is the structured-mode content type.
const ContentTypeCloudEventsJSON = "application/cloudevents+json"

// Outcomes of a cleanup or flush, as reported in [QueueResult].
const (
	OutcomeRemoved      = "removed"
	OutcomeNothing      = "nothing_to_remove"
	OutcomeKeptLaterRun = "kept_later_run"
	// OutcomeKept: something was found and left alone, not for belonging to
	// a later run: an orphan in use, or nothing to judge its creation by.
	OutcomeKept        = "kept"
	OutcomeAlreadyDone = "already_done"
	// OutcomeStale answers a restart request that a newer event of the job
	// superseded: nothing was removed, and the backend must not publish a
	// round for it.
	OutcomeStale = "stale"
)

// QueueResult is the data of job.queue.cleaned and job.queue.flushed events.
type QueueResult struct {
	JobID   queue.JobID `json:"job_id"`
	Attempt *int64      `json:"attempt,omitempty"`
	// Status is the status of the event that caused the action.
	Status       Status `json:"status"`
	CauseEventID string `json:"cause_event_id"`
	// Outcome is one of the Outcome constants.
	Outcome string `json:"outcome"`
	queue.Removal
	DurationMS float64 `json:"duration_ms"`
	// EffectTime is when the effect finished (the replica's clock, UTC). An
	// answer that arrives long after it is late, not new.
	EffectTime time.Time `json:"effect_time,omitzero"`
	// Trigger is empty for an answer to a status event, "reconciler" or
	// "operator" for a removal no event asked for.
	Trigger string `json:"trigger,omitempty"`
}

// DeadLetter is the data of a job.deadletter.status event.
type DeadLetter struct {
	Reason   Reason          `json:"reason"`
	Detail   string          `json:"detail"`
	Original OriginalMessage `json:"original"`
}

// OriginalMessage is a rejected message as it was received.
type OriginalMessage struct {
	Subject string              `json:"subject"`
	Header  map[string][]string `json:"header,omitempty"`
	// Body is set when the body is valid UTF-8, BodyBase64 otherwise.
	Body       string `json:"body,omitempty"`
	BodyBase64 []byte `json:"body_base64,omitempty"`
	// Truncated says the body was cut to the event size limit.
	Truncated bool `json:"truncated,omitempty"`
	// Stream and Sequence locate the original in the event stream.
	Stream    string `json:"stream,omitempty"`
	Sequence  uint64 `json:"sequence,omitempty"`
	Delivered uint64 `json:"delivered,omitempty"`
}

// NewOriginal captures a message for a dead letter, cutting its body to max
// bytes.
func NewOriginal(subject string, h nats.Header, body []byte, maxBody int) OriginalMessage {
	o := OriginalMessage{Subject: subject}
	if len(h) > 0 {
		o.Header = make(map[string][]string, len(h))
		for k, v := range h {
			o.Header[k] = append([]string(nil), v...)
		}
	}
	if maxBody > 0 && len(body) > maxBody {
		body, o.Truncated = body[:maxBody], true
	}
	if utf8.Valid(body) {
		o.Body = string(body)
	} else {
		o.BodyBase64 = append([]byte(nil), body...)
	}
	return o
}

// PublisherConfig names where the service's events go.
type PublisherConfig struct {
	// Source is the CloudEvents source of every emitted event.
	Source string
	// CleanedSubject and FlushedSubject are patterns with {id}.
	CleanedSubject string
	FlushedSubject string
	// DeadLetterSubject receives rejected events.
	DeadLetterSubject string
}

// DefaultPublisherConfig returns the contract's subjects (section 3).
func DefaultPublisherConfig() PublisherConfig {
	return PublisherConfig{
		Source:            "queue-janitor",
		CleanedSubject:    "job.queue.cleaned.{id}",
		FlushedSubject:    "job.queue.flushed.{id}",
		DeadLetterSubject: "job.deadletter.status",
	}
}

// Validate names the first bad field.
func (c PublisherConfig) Validate() error {
	switch {
	case c.Source == "":
		return fmt.Errorf("event source must not be empty")
	case strings.Count(c.CleanedSubject, queue.IDPlaceholder) != 1:
		return fmt.Errorf("cleaned subject %q must contain %s once", c.CleanedSubject, queue.IDPlaceholder)
	case strings.Count(c.FlushedSubject, queue.IDPlaceholder) != 1:
		return fmt.Errorf("flushed subject %q must contain %s once", c.FlushedSubject, queue.IDPlaceholder)
	case c.DeadLetterSubject == "" || strings.ContainsAny(c.DeadLetterSubject, "*> "):
		return fmt.Errorf("dead-letter subject %q must be a literal subject", c.DeadLetterSubject)
	case strings.HasPrefix(c.DeadLetterSubject, "job.status."):
		return fmt.Errorf("dead-letter subject %q must not be under job.status., or rejected events would be read again", c.DeadLetterSubject)
	}
	return nil
}

// Publisher emits the service's CloudEvents (structured JSON) on core NATS,
// each carrying the current trace context in the distributed-tracing
// extension. It is safe for concurrent use.
type Publisher struct {
	nc *nats.Conn
	js jetstream.JetStream

	mu          sync.Mutex
	capture     map[string]bool // subject -> a stream captures it
	captureSeen time.Time
	cfg         PublisherConfig
	tracer      trace.Tracer
	now         func() time.Time
}

// NewPublisher returns a Publisher on nc. tracer may be nil.
func NewPublisher(nc *nats.Conn, cfg PublisherConfig, tracer trace.Tracer) *Publisher {
	if tracer == nil {
		tracer = noop.NewTracerProvider().Tracer("")
	}
	js, _ := jetstream.New(nc) // fails only for a nil connection
	return &Publisher{nc: nc, js: js, cfg: cfg, tracer: tracer, now: time.Now}
}

// Cleaned emits job.queue.cleaned.{id} and waits until the server has it
// (a flush): the handler sends it beside the effect's record write, so
// that the event is acknowledged only once both are done, and handed back
// (answered again) when the answer may not have reached the server.
func (p *Publisher) Cleaned(ctx context.Context, r QueueResult) error {
	return p.publish(ctx, fillID(p.cfg.CleanedSubject, r.JobID), TypeCleaned, r.JobID.String(), r, nil, flushed)
}

// Flushed emits job.queue.flushed.{id}.
func (p *Publisher) Flushed(ctx context.Context, r QueueResult) error {
	return p.publish(ctx, fillID(p.cfg.FlushedSubject, r.JobID), TypeFlushed, r.JobID.String(), r, nil, notConfirmed)
}

// DeadLetter emits a rejected event on the dead-letter subject and waits
// until it is kept, so that the original may then be terminated. When a
// stream captures the subject, that stream must acknowledge it: a publish
// it refuses (a permission) or does not answer is an error, and the
// original is retried later. When none does, it is published on core NATS
// and confirmed by a flush; the original then stays in the event stream, by
// its sequence, until the stream's age limit.
func (p *Publisher) DeadLetter(ctx context.Context, jobID string, dl DeadLetter) error {
	h := nats.Header{ReasonHeader: []string{string(dl.Reason)}}
	return p.publish(ctx, p.cfg.DeadLetterSubject, TypeDeadLetter, jobID, dl, h, kept)
}

func (p *Publisher) publish(ctx context.Context, subject, typ, jobID string, data any, h nats.Header, confirm confirmation) error {
	ctx, span := p.tracer.Start(ctx, "publish "+subject, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(semconv.MessagingSystemKey.String("nats"), semconv.MessagingDestinationName(subject),
			semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("publish"),
			attribute.String("cloudevents.event_type", typ)))
	defer span.End()
	err := p.send(ctx, subject, typ, jobID, data, h, confirm, span)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

func (p *Publisher) send(ctx context.Context, subject, typ, jobID string, data any, h nats.Header, confirm confirmation, span trace.Span) error {
	ev := event.New()
	ev.SetID(uuid.NewString())
	ev.SetSource(p.cfg.Source)
	ev.SetType(typ)
	ev.SetTime(p.now())
	if jobID != "" {
		ev.SetSubject(jobID)
	}
	if err := ev.SetData(event.ApplicationJSON, data); err != nil {
		return fmt.Errorf("encode %s data: %w", typ, err)
	}
	traceparent, tracestate := telemetry.TraceContext(ctx)
	if traceparent != "" {
		ev.SetExtension("traceparent", traceparent)
		if tracestate != "" {
			ev.SetExtension("tracestate", tracestate)
		}
	}
	span.SetAttributes(semconv.MessagingMessageID(ev.ID()), attribute.String("cloudevents.event_id", ev.ID()))
	// The event's own encoder, not json.Marshal: that would scan its
	// output again to compact it (2% of the service's CPU in a storm).
	body, err := ev.MarshalJSON()
	if err != nil {
		return fmt.Errorf("encode %s event: %w", typ, err)
	}
	msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
	for k, v := range h {
		msg.Header[k] = v
	}
	msg.Header.Set("Content-Type", ContentTypeCloudEventsJSON)
	if traceparent != "" {
		msg.Header.Set("traceparent", traceparent)
	}
	if confirm == kept && p.captured(ctx, subject) {
		if _, err := p.js.PublishMsg(ctx, msg); err != nil {
			return fmt.Errorf("publish %s on %q (stream capturing it did not acknowledge): %w", typ, subject, err)
		}
		return nil
	}
	if err := p.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("publish %s on %q: %w", typ, subject, err)
	}
	if confirm != notConfirmed {
		fctx, cancel := context.WithTimeout(ctx, confirmTimeout)
		defer cancel()
		if err := p.nc.FlushWithContext(fctx); err != nil {
			return fmt.Errorf("confirm %s on %q: %w", typ, subject, err)
		}
	}
	return nil
}

// captureTTL is how long the answer to "does a stream capture this
// subject?" is kept.
const captureTTL = 30 * time.Second

// captured reports whether a stream captures subject, so that a publish
// on it must be acknowledged by that stream. A failed lookup counts as no.
func (p *Publisher) captured(ctx context.Context, subject string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.captureSeen) > captureTTL {
		p.capture, p.captureSeen = map[string]bool{}, time.Now()
	}
	if v, ok := p.capture[subject]; ok {
		return v
	}
	ctx, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
	// The stream listing (an API the service's user may already call)
	// filtered by the subject, rather than the stream-names API.
	l := p.js.ListStreams(ctx, jetstream.WithStreamListSubject(subject))
	found := false
	for range l.Info() {
		found = true
	}
	found = found && l.Err() == nil
	p.capture[subject] = found
	return found
}

func fillID(pattern string, id queue.JobID) string {
	return strings.Replace(pattern, queue.IDPlaceholder, id.String(), 1)
}
