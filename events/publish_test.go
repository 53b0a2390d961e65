package events

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// pubEnv is a Publisher on a real embedded NATS server, tracing to a
// recorder.
type pubEnv struct {
	nc     *nats.Conn
	pub    *Publisher
	spans  *tracetest.SpanRecorder
	tracer trace.Tracer
}

func setupPublisher(t *testing.T) pubEnv {
	t.Helper()
	srv := natstest.RunServer(t)
	nc, _ := natstest.Connect(t, srv.URL())
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tracer := tp.Tracer("events_test")
	return pubEnv{nc: nc, pub: NewPublisher(nc, DefaultPublisherConfig(), tracer), spans: spans, tracer: tracer}
}

// subscribe returns a function that waits for the next message on subject.
func (e pubEnv) subscribe(t *testing.T, subject string) func() *nats.Msg {
	t.Helper()
	sub, err := e.nc.SubscribeSync(subject)
	if err != nil {
		t.Fatalf("subscribe %s: %v", subject, err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := e.nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	return func() *nats.Msg {
		t.Helper()
		msg, err := sub.NextMsg(waitTimeout)
		if err != nil {
			t.Fatalf("no message on %s: %v", subject, err)
		}
		return msg
	}
}

// span returns the one ended span called name.
func (e pubEnv) span(t *testing.T, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	for _, s := range e.spans.Ended() {
		if s.Name() == name {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d ended spans named %q, want 1", len(found), name)
	}
	return found[0]
}

// readEvent checks msg is a valid structured CloudEvent of type typ.
func readEvent(t *testing.T, msg *nats.Msg, typ string) event.Event {
	t.Helper()
	if ct := msg.Header.Get("Content-Type"); ct != ContentTypeCloudEventsJSON {
		t.Errorf("Content-Type = %q, want %q", ct, ContentTypeCloudEventsJSON)
	}
	var ev event.Event
	if err := json.Unmarshal(msg.Data, &ev); err != nil {
		t.Fatalf("body is not a CloudEvent: %v\n%s", err, msg.Data)
	}
	if err := ev.Validate(); err != nil {
		t.Errorf("invalid CloudEvent: %v", err)
	}
	if ev.SpecVersion() != "1.0" || ev.Type() != typ || ev.Source() != "queue-janitor" || ev.DataContentType() != "application/json" {
		t.Errorf("specversion %q type %q source %q datacontenttype %q, want 1.0 %s queue-janitor application/json",
			ev.SpecVersion(), ev.Type(), ev.Source(), ev.DataContentType(), typ)
	}
	if _, err := uuid.Parse(ev.ID()); err != nil {
		t.Errorf("id %q is not a UUID: %v", ev.ID(), err)
	}
	return ev
}

// assertJSON compares JSON documents by value.
func assertJSON(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("data is not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad want: %v", err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("data =\n%s\nwant\n%s", got, want)
	}
}

// traceOf parses a traceparent value.
func traceOf(t *testing.T, traceparent string) trace.SpanContext {
	t.Helper()
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": traceparent})
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		t.Fatalf("traceparent %q is not valid", traceparent)
	}
	return sc
}

func TestPublisherQueueEvents(t *testing.T) {
	t.Parallel()
	result := QueueResult{
		JobID: 7, Attempt: Attempt(3), Status: StatusRestartRequested, CauseEventID: "evt-1", Outcome: OutcomeRemoved,
		Removal: queue.Removal{
			Stream: "job_7", StreamFound: true, Deleted: []string{"stream job_7", "consumer job_7/job-7-consumer"},
			MessagesDiscarded: 12, ConsumersRemoved: 2,
		},
		DurationMS: 1.5,
	}
	wantData := `{"job_id":7,"attempt":3,"status":"restart_requested","cause_event_id":"evt-1","outcome":"removed",
		"stream":"job_7","stream_found":true,"deleted":["stream job_7","consumer job_7/job-7-consumer"],
		"messages_discarded":12,"consumers_removed":2,"duration_ms":1.5}`
	tests := []struct {
		name    string
		publish func(*Publisher, context.Context, QueueResult) error
		subject string
		typ     string
	}{
		{name: "flushed", publish: (*Publisher).Flushed, subject: "job.queue.flushed.7", typ: TypeFlushed},
		{name: "cleaned", publish: (*Publisher).Cleaned, subject: "job.queue.cleaned.7", typ: TypeCleaned},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := setupPublisher(t)
			next := env.subscribe(t, tc.subject)
			ctx, parent := env.tracer.Start(t.Context(), "handle event")
			before := time.Now()
			if err := tc.publish(env.pub, ctx, result); err != nil {
				t.Fatalf("publish: %v", err)
			}
			parent.End()

			msg := next()
			ev := readEvent(t, msg, tc.typ)
			if ev.Subject() != "7" {
				t.Errorf("subject attribute = %q, want 7", ev.Subject())
			}
			if ev.Time().Before(before) || ev.Time().After(time.Now()) {
				t.Errorf("time %v is not the time of publishing", ev.Time())
			}
			assertJSON(t, ev.Data(), wantData)

			span := env.span(t, "publish "+tc.subject)
			if span.SpanKind() != trace.SpanKindProducer {
				t.Errorf("span kind = %v, want producer", span.SpanKind())
			}
			if span.Parent().SpanID() != parent.SpanContext().SpanID() {
				t.Errorf("publish span's parent = %v, want the span in ctx %v", span.Parent().SpanID(), parent.SpanContext().SpanID())
			}
			if span.Status().Code != codes.Unset {
				t.Errorf("span status = %v, want unset", span.Status())
			}
			attrs := attribute.NewSet(span.Attributes()...)
			for k, want := range map[attribute.Key]string{
				"messaging.system": "nats", "messaging.destination.name": tc.subject,
				"cloudevents.event_type": tc.typ, "cloudevents.event_id": ev.ID(),
			} {
				if got, _ := attrs.Value(k); got.AsString() != want {
					t.Errorf("span attribute %s = %q, want %q", k, got.AsString(), want)
				}
			}

			tp, _ := ev.Extensions()["traceparent"].(string)
			sc := traceOf(t, tp)
			if sc.TraceID() != parent.SpanContext().TraceID() {
				t.Errorf("traceparent trace id = %v, want the parent's %v", sc.TraceID(), parent.SpanContext().TraceID())
			}
			if sc.SpanID() != span.SpanContext().SpanID() {
				t.Errorf("traceparent span id = %v, want the publish span's %v", sc.SpanID(), span.SpanContext().SpanID())
			}
			if h := msg.Header.Get("traceparent"); h != tp {
				t.Errorf("traceparent header = %q, want the extension %q", h, tp)
			}
		})
	}
}

func TestPublisherDeadLetter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		jobID       string
		wantSubject string
	}{
		{name: "with a job id", jobID: "42", wantSubject: "42"},
		{name: "without a job id", jobID: "", wantSubject: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := setupPublisher(t)
			next := env.subscribe(t, "job.deadletter.status")
			orig := NewOriginal("job.status.revoked", nats.Header{"Content-Type": {"application/json"}}, []byte(`{"job_id":"x"}`), 1024)
			orig.Stream, orig.Sequence, orig.Delivered = "JOB_EVENTS", 5, 1
			err := env.pub.DeadLetter(t.Context(), tc.jobID, DeadLetter{Reason: ReasonBadJobID, Detail: "data.job_id: not a job id", Original: orig})
			if err != nil {
				t.Fatalf("DeadLetter: %v", err)
			}
			msg := next()
			if got := msg.Header.Get(ReasonHeader); got != "bad_job_id" {
				t.Errorf("%s header = %q, want bad_job_id", ReasonHeader, got)
			}
			ev := readEvent(t, msg, TypeDeadLetter)
			if ev.Subject() != tc.wantSubject {
				t.Errorf("subject attribute = %q, want %q", ev.Subject(), tc.wantSubject)
			}
			assertJSON(t, ev.Data(), `{"reason":"bad_job_id","detail":"data.job_id: not a job id","original":{
				"subject":"job.status.revoked","header":{"Content-Type":["application/json"]},"body":"{\"job_id\":\"x\"}",
				"stream":"JOB_EVENTS","sequence":5,"delivered":1}}`)
			// With no span in ctx the publish span is a root, and the
			// event continues it.
			span := env.span(t, "publish job.deadletter.status")
			if span.SpanKind() != trace.SpanKindProducer || span.Parent().IsValid() {
				t.Errorf("span kind %v parent %v, want a producer root span", span.SpanKind(), span.Parent())
			}
			tp, _ := ev.Extensions()["traceparent"].(string)
			if sc := traceOf(t, tp); sc.SpanID() != span.SpanContext().SpanID() || sc.TraceID() != span.SpanContext().TraceID() {
				t.Errorf("traceparent %q, want the publish span %v", tp, span.SpanContext())
			}
		})
	}
}

// TestPublisherNilTracer checks that without a tracer the caller's trace is
// still carried on.
func TestPublisherNilTracer(t *testing.T) {
	t.Parallel()
	env := setupPublisher(t)
	pub := NewPublisher(env.nc, DefaultPublisherConfig(), nil)
	next := env.subscribe(t, "job.queue.cleaned.9")
	ctx, remote := remoteSpan(t.Context(), t)
	if err := pub.Cleaned(ctx, QueueResult{JobID: 9, Outcome: OutcomeNothing}); err != nil {
		t.Fatalf("Cleaned: %v", err)
	}
	ev := readEvent(t, next(), TypeCleaned)
	want := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if tp, _ := ev.Extensions()["traceparent"].(string); tp != want || traceOf(t, tp).TraceID() != remote.TraceID() {
		t.Errorf("traceparent = %q, want %q", tp, want)
	}
	if ts, _ := ev.Extensions()["tracestate"].(string); ts != "vendor=opaque" {
		t.Errorf("tracestate = %q, want vendor=opaque", ts)
	}
	if n := len(env.spans.Ended()); n != 0 {
		t.Errorf("%d spans recorded by another tracer", n)
	}
}

func TestPublisherClosedConnection(t *testing.T) {
	t.Parallel()
	env := setupPublisher(t)
	env.nc.Close()
	tests := []struct {
		name    string
		publish func() error
		span    string
	}{
		{"flushed", func() error { return env.pub.Flushed(t.Context(), QueueResult{JobID: 3}) }, "publish job.queue.flushed.3"},
		{"dead letter", func() error { return env.pub.DeadLetter(t.Context(), "", DeadLetter{Reason: ReasonMalformed}) }, "publish job.deadletter.status"},
	}
	for _, tc := range tests {
		err := tc.publish()
		if !errors.Is(err, nats.ErrConnectionClosed) {
			t.Errorf("%s: err = %v, want nats.ErrConnectionClosed", tc.name, err)
		}
		span := env.span(t, tc.span)
		if span.Status().Code != codes.Error || len(span.Events()) == 0 || span.Events()[0].Name != "exception" {
			t.Errorf("%s: span status %v events %v, want an error with the exception recorded", tc.name, span.Status(), span.Events())
		}
	}
}
