"""otel_trace_context with OpenTelemetry absent and with a fake of its API."""

import json
import sys
import types
import unittest
from unittest import mock

from job_status_events import EventConfig, build_status_event, otel_trace_context

from .helpers import T0, TRACEPARENT


def fake_otel(valid: bool = True, tracestate: str = "vendor=abc", inject_error: bool = False) -> dict:
    """sys.modules entries standing in for the opentelemetry-api package."""

    class SpanContext:
        is_valid = valid

    class Span:
        def get_span_context(self):
            return SpanContext()

    class TraceContextTextMapPropagator:
        def inject(self, carrier):
            if inject_error:
                raise RuntimeError("propagator broke")
            carrier["traceparent"] = TRACEPARENT
            if tracestate:
                carrier["tracestate"] = tracestate

    root = types.ModuleType("opentelemetry")
    trace = types.ModuleType("opentelemetry.trace")
    trace.get_current_span = lambda: Span()
    propagation = types.ModuleType("opentelemetry.trace.propagation")
    tracecontext = types.ModuleType("opentelemetry.trace.propagation.tracecontext")
    tracecontext.TraceContextTextMapPropagator = TraceContextTextMapPropagator
    root.trace = trace
    trace.propagation = propagation
    propagation.tracecontext = tracecontext
    return {
        "opentelemetry": root,
        "opentelemetry.trace": trace,
        "opentelemetry.trace.propagation": propagation,
        "opentelemetry.trace.propagation.tracecontext": tracecontext,
    }


class OtelTraceContextTest(unittest.TestCase):
    def test_absent_package_gives_nothing(self):
        # A None entry makes `import opentelemetry` raise ImportError, as on CI.
        with mock.patch.dict(sys.modules, {"opentelemetry": None}):
            self.assertEqual(otel_trace_context(), (None, None))

    def test_valid_span(self):
        with mock.patch.dict(sys.modules, fake_otel()):
            self.assertEqual(otel_trace_context(), (TRACEPARENT, "vendor=abc"))

    def test_empty_tracestate_is_none(self):
        with mock.patch.dict(sys.modules, fake_otel(tracestate="")):
            self.assertEqual(otel_trace_context(), (TRACEPARENT, None))

    def test_invalid_span_gives_nothing(self):
        with mock.patch.dict(sys.modules, fake_otel(valid=False)):
            self.assertEqual(otel_trace_context(), (None, None))

    def test_failing_propagator_gives_nothing(self):
        with mock.patch.dict(sys.modules, fake_otel(inject_error=True)):
            self.assertEqual(otel_trace_context(), (None, None))

    def test_default_config_uses_it(self):
        with mock.patch.dict(sys.modules, fake_otel()):
            msg = build_status_event(5, "REVOKED", time=T0, config=EventConfig(), event_id="x")
        ev = json.loads(msg.body)
        self.assertEqual((ev["traceparent"], ev["tracestate"]), (TRACEPARENT, "vendor=abc"))
        with mock.patch.dict(sys.modules, {"opentelemetry": None}):
            msg = build_status_event(5, "REVOKED", time=T0, config=EventConfig(), event_id="x")
        self.assertNotIn("traceparent", json.loads(msg.body))


if __name__ == "__main__":
    unittest.main()
