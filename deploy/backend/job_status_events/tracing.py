"""The current OpenTelemetry trace context, when there is one.

OpenTelemetry is optional: it is imported lazily, at each call, and its
absence (or any failure in it) gives ``(None, None)``, so that a status event
is never held up by tracing.
"""

from __future__ import annotations

from typing import Optional, Tuple


def otel_trace_context() -> Tuple[Optional[str], Optional[str]]:
    """``(traceparent, tracestate)`` of the current span, or ``(None, None)``.

    Only the W3C trace context is taken (not baggage, not whatever other
    propagators the application configured): that is what the service reads
    from the CloudEvents distributed-tracing extension.
    """
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None, None
    try:
        span = trace.get_current_span()
        if not span.get_span_context().is_valid:
            return None, None
        carrier: dict = {}
        TraceContextTextMapPropagator().inject(carrier)
    except Exception:
        return None, None
    return carrier.get("traceparent") or None, carrier.get("tracestate") or None
