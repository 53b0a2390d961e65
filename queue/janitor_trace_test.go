package queue

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func intAttr(s sdktrace.ReadOnlySpan, key string) (int64, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == attribute.Key(key) {
			return kv.Value.AsInt64(), true
		}
	}
	return 0, false
}

// TestRemoveTracesEachActionAndAttempt: every JetStream call is a span under
// the caller's span, with one child span per attempt.
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
	wantActions := map[string]int{"jetstream.stream_info": 1, "jetstream.delete_consumer": 1,
		"jetstream.delete_stream": 1}
	gotActions := map[string]int{}
	for _, s := range spans {
		if _, ok := wantActions[s.Name()]; !ok {
			continue
		}
		gotActions[s.Name()]++
		if s.Parent().SpanID() != root.SpanContext().SpanID() {
			t.Errorf("span %s is not a child of the caller's span", s.Name())
		}
		if n, ok := intAttr(s, "retry.attempts"); !ok || n != 1 {
			t.Errorf("span %s: retry.attempts = %d (%v), want 1", s.Name(), n, ok)
		}
		var children []sdktrace.ReadOnlySpan
		for _, c := range spans {
			if c.Parent().SpanID() == s.SpanContext().SpanID() {
				children = append(children, c)
			}
		}
		if len(children) != 0 {
			t.Errorf("span %s has children %v; a call that succeeds at once has no retry spans", s.Name(), names(children))
		}
	}
	for name, want := range wantActions {
		if gotActions[name] != want {
			t.Errorf("%d spans named %q, want %d", gotActions[name], name, want)
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
