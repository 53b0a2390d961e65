package telemetry

import (
	"context"

	"go.opentelemetry.io/otel/propagation"
)

// traceContext is the W3C Trace Context propagator that the CloudEvents
// distributed-tracing extension (traceparent, tracestate) is defined on.
var traceContext = propagation.TraceContext{}

// TraceContext returns the W3C traceparent and tracestate of the span in ctx,
// or "" when ctx carries no valid span context.
func TraceContext(ctx context.Context) (traceparent, tracestate string) {
	c := propagation.MapCarrier{}
	traceContext.Inject(ctx, c)
	return c["traceparent"], c["tracestate"]
}

// WithRemoteParent returns ctx carrying the remote span context described by
// traceparent and tracestate. Malformed values are ignored: ctx comes back
// unchanged, so a producer's bad header never fails an event.
func WithRemoteParent(ctx context.Context, traceparent, tracestate string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return traceContext.Extract(ctx, propagation.MapCarrier{"traceparent": traceparent, "tracestate": tracestate})
}
