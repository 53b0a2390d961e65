package queue

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// TestRemoveTracesEachActionAndAttempt: every JetStream call made inside
// the caller's span is an event on that span, with its attributes, its
// attempts and its duration; no span of its own.
func TestRemoveTracesEachActionAndAttempt(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 1, nil)
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	t.Cleanup(func() { _ = tp.Shutdown(context.WithoutCancel(t.Context())) })

	ctx, root := tp.Tracer("t").Start(t.Context(), "handle event")
	if _, err := e.janitor(WithTracer(tp.Tracer("t"))).Remove(ctx, 1, openFence(), nil); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	root.End()

	spans := sr.Ended()
	if len(spans) != 1 {
		t.Fatalf("spans %v; want the caller's span alone", names(spans))
	}
	wantActions := map[string]int{"jetstream.stream_info": 1, "jetstream.delete_consumer": 1, "jetstream.delete_stream": 1}
	gotActions := map[string]int{}
	for _, ev := range spans[0].Events() {
		if _, ok := wantActions[ev.Name]; !ok {
			t.Errorf("unexpected event %q on the caller's span", ev.Name)
			continue
		}
		gotActions[ev.Name]++
		attrs := map[attribute.Key]attribute.Value{}
		for _, kv := range ev.Attributes {
			attrs[kv.Key] = kv.Value
		}
		if a, ok := attrs["retry.attempts"]; !ok || a.AsInt64() != 1 {
			t.Errorf("event %s: retry.attempts = %v, want 1", ev.Name, a)
		}
		if _, ok := attrs["duration_ms"]; !ok {
			t.Errorf("event %s has no duration_ms", ev.Name)
		}
		if s, ok := attrs["jetstream.stream"]; !ok || s.AsString() == "" {
			t.Errorf("event %s has no jetstream.stream", ev.Name)
		}
	}
	for name, want := range wantActions {
		if gotActions[name] != want {
			t.Errorf("%d events named %q, want %d", gotActions[name], name, want)
		}
	}
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	out := make([]string, len(spans))
	for i, s := range spans {
		out[i] = s.Name()
	}
	return out
}
