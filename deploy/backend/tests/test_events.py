import datetime as dt
import json
import unittest
import uuid

from job_status_events import EventConfig, build_status_event, format_time, normalize_status, with_attempt
from job_status_events.events import message_size

from .helpers import T0, T0_TEXT, TRACEPARENT, decode_like_service, ids

NO_TRACE = EventConfig(trace_context=None, id_factory=ids("unused"))


def cfg(**kw) -> EventConfig:
    kw.setdefault("trace_context", None)
    return EventConfig(**kw)


class StructuredModeTest(unittest.TestCase):
    def test_terminal_event_byte_exact(self):
        msg = build_status_event(
            4242, "REVOKED", time=T0, previous_status="STARTED", attempt=1, dispatch_mode="async_api",
            reason="no heartbeat for 2h", actor="watchdog",
            config=cfg(type_prefix="org.example."), event_id="72a7566a-0d6e-4a41-9a7f-4e5a1c2b3d4e")
        self.assertEqual(msg.subject, "job.status.revoked")
        self.assertEqual(msg.headers, {
            "Content-Type": "application/cloudevents+json",
            "Nats-Msg-Id": "72a7566a-0d6e-4a41-9a7f-4e5a1c2b3d4e",
        })
        self.assertEqual(msg.body, (
            b'{"specversion":"1.0","id":"72a7566a-0d6e-4a41-9a7f-4e5a1c2b3d4e","source":"/job-backend",'
            b'"type":"org.example.job.status.revoked","subject":"4242","time":"2026-11-28T15:05:39.250000Z",'
            b'"datacontenttype":"application/json","data":{"job_id":4242,"status":"REVOKED",'
            b'"previous_status":"STARTED","attempt":1,"dispatch_mode":"async_api",'
            b'"reason":"no heartbeat for 2h","actor":"watchdog"}}'))
        self.assertEqual((msg.event_id, msg.status, msg.job_id, msg.attempt),
                         ("72a7566a-0d6e-4a41-9a7f-4e5a1c2b3d4e", "revoked", 4242, 1))

    def test_restart_event_parsed_back(self):
        msg = build_status_event(7, "restart_requested", time=T0, previous_status="failure", attempt=3,
                                 actor="alice", config=cfg(source="/backend/prod"), event_id="e-1")
        self.assertEqual(msg.subject, "job.status.restart_requested")
        ev = json.loads(msg.body)
        self.assertEqual(ev, {
            "specversion": "1.0", "id": "e-1", "source": "/backend/prod", "type": "job.status.restart_requested",
            "subject": "7", "time": T0_TEXT, "datacontenttype": "application/json",
            "data": {"job_id": 7, "status": "RESTART_REQUESTED", "previous_status": "FAILURE", "attempt": 3,
                     "actor": "alice"},
        })
        got = decode_like_service(msg.subject, msg.headers, msg.body)
        self.assertEqual(got["data"]["attempt"], 3)
        self.assertEqual(got["attrs"]["id"], msg.headers["Nats-Msg-Id"])


class BinaryModeTest(unittest.TestCase):
    def test_terminal_event_headers_and_body_exact(self):
        msg = build_status_event(4242, "CANCELLED", time=T0, previous_status="STARTED", attempt=2,
                                 actor="bob", reason="user pressed cancel",
                                 config=cfg(binary=True, type_prefix="org.example."), event_id="e-2")
        self.assertEqual(msg.subject, "job.status.cancelled")
        self.assertEqual(msg.headers, {
            "ce-specversion": "1.0",
            "ce-id": "e-2",
            "ce-source": "/job-backend",
            "ce-type": "org.example.job.status.cancelled",
            "ce-subject": "4242",
            "ce-time": T0_TEXT,
            "Content-Type": "application/json",
            "Nats-Msg-Id": "e-2",
        })
        self.assertEqual(msg.body, b'{"job_id":4242,"status":"CANCELLED","previous_status":"STARTED","attempt":2,'
                                   b'"reason":"user pressed cancel","actor":"bob"}')
        got = decode_like_service(msg.subject, msg.headers, msg.body)
        self.assertEqual(got["attrs"]["type"], "org.example.job.status.cancelled")
        self.assertEqual(got["data"]["status"], "CANCELLED")

    def test_restart_event_headers_exact(self):
        msg = build_status_event(9, "RESTART_REQUESTED", time=T0, attempt=0, config=cfg(binary=True),
                                 event_id="e-3")
        self.assertEqual(msg.subject, "job.status.restart_requested")
        self.assertEqual(msg.headers, {
            "ce-specversion": "1.0", "ce-id": "e-3", "ce-source": "/job-backend",
            "ce-type": "job.status.restart_requested", "ce-subject": "9", "ce-time": T0_TEXT,
            "Content-Type": "application/json", "Nats-Msg-Id": "e-3",
        })
        self.assertEqual(json.loads(msg.body), {"job_id": 9, "status": "RESTART_REQUESTED", "attempt": 0})
        decode_like_service(msg.subject, msg.headers, msg.body)

    def test_optional_time_absent_from_headers(self):
        msg = build_status_event(9, "STARTED", config=cfg(binary=True), event_id="e-4")
        self.assertNotIn("ce-time", msg.headers)
        self.assertEqual(msg.body, b'{"job_id":9,"status":"STARTED"}')


class StatusTest(unittest.TestCase):
    def test_any_case_gives_lower_subject_and_upper_data(self):
        for given in ("REVOKED", "revoked", " Revoked ", "rEvOkEd"):
            with self.subTest(given=given):
                msg = build_status_event(5, given, time=T0, config=NO_TRACE, event_id="x")
                self.assertEqual(msg.subject, "job.status.revoked")
                ev = json.loads(msg.body)
                self.assertEqual(ev["type"], "job.status.revoked")
                self.assertEqual(ev["data"]["status"], "REVOKED")

    def test_normalize(self):
        self.assertEqual(normalize_status(" RESTART_REQUESTED\n"), "restart_requested")
        self.assertEqual(normalize_status("state2"), "state2")

    def test_invalid_statuses_refused(self):
        for bad in ("", "  ", "job.status", "re voked", "1abc", "_x", "*", ">", "revoked.x", "a" * 65, None, 5,
                    "révoqué"):
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    build_status_event(5, bad, time=T0, config=NO_TRACE, event_id="x")

    def test_longest_status_accepted(self):
        msg = build_status_event(5, "a" * 64, config=NO_TRACE, event_id="x")
        self.assertEqual(msg.subject, "job.status." + "a" * 64)

    def test_custom_subject_prefix_keeps_type(self):
        msg = build_status_event(5, "FAILURE", time=T0, config=cfg(subject_prefix="acme.job.status."), event_id="x")
        self.assertEqual(msg.subject, "acme.job.status.failure")
        self.assertEqual(json.loads(msg.body)["type"], "job.status.failure")


class TimeTest(unittest.TestCase):
    def test_required_for_terminal_and_restart(self):
        for status in ("REVOKED", "FAILURE", "CANCELLED", "restart_requested", "Revoked"):
            with self.subTest(status=status):
                with self.assertRaisesRegex(ValueError, "time"):
                    build_status_event(5, status, config=NO_TRACE, event_id="x")
                with self.assertRaisesRegex(ValueError, "time"):
                    build_status_event(5, status, config=cfg(binary=True), event_id="x")

    def test_optional_for_other_statuses(self):
        for status in ("STARTED", "PENDING", "SUCCESS", "RETRY", "CANCELING", "CREATED"):
            with self.subTest(status=status):
                msg = build_status_event(5, status, config=NO_TRACE, event_id="x")
                ev = json.loads(msg.body)
                self.assertNotIn("time", ev)
                self.assertEqual(ev["data"], {"job_id": 5, "status": status})

    def test_success_required_when_configured_terminal(self):
        conf = cfg(terminal_statuses=frozenset({"revoked", "failure", "cancelled", "SUCCESS"}))
        with self.assertRaisesRegex(ValueError, "time"):
            build_status_event(5, "SUCCESS", config=conf, event_id="x")
        self.assertTrue(conf.time_required("success"))
        self.assertFalse(conf.time_required("started"))

    def test_rendered_in_utc(self):
        plus_one = dt.timezone(dt.timedelta(hours=1))
        self.assertEqual(format_time(dt.datetime(2026, 11, 28, 16, 5, 39, tzinfo=plus_one)),
                         "2026-11-28T15:05:39.000000Z")
        self.assertEqual(format_time(T0), T0_TEXT)

    def test_wrong_type_refused(self):
        for bad in ("2026-11-28T15:05:39Z", 1764342339, dt.date(2026, 11, 28)):
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    build_status_event(5, "REVOKED", time=bad, config=NO_TRACE, event_id="x")


class NaiveTimeTest(unittest.TestCase):
    """Antenna: USE_TZ = False, TIME_ZONE = "America/New_York"; its times
    are naive local datetimes. They are read in the configured zone, never
    refused (a refusal would raise inside the backend's transaction)."""

    def test_read_in_the_backends_zone(self):
        conf = cfg(naive_time_zone="America/New_York")
        cases = {
            dt.datetime(2026, 7, 22, 10, 0, 0): "2026-07-22T14:00:00.000000Z",    # EDT, UTC-4
            dt.datetime(2026, 11, 28, 10, 5, 39, 250000): "2026-11-28T15:05:39.250000Z",  # EST, UTC-5
        }
        for naive, want in cases.items():
            with self.subTest(naive=naive):
                msg = build_status_event(5, "REVOKED", time=naive, config=conf, event_id="x")
                self.assertEqual(json.loads(msg.body)["time"], want)
                self.assertEqual(format_time(naive, "America/New_York"), want)

    def test_tzinfo_accepted(self):
        conf = cfg(naive_time_zone=dt.timezone(dt.timedelta(hours=2)))
        msg = build_status_event(5, "FAILURE", time=dt.datetime(2026, 11, 28, 17, 5, 39), config=conf, event_id="x")
        self.assertEqual(json.loads(msg.body)["time"], "2026-11-28T15:05:39.000000Z")

    def test_aware_time_ignores_the_zone(self):
        conf = cfg(naive_time_zone="America/New_York")
        msg = build_status_event(5, "REVOKED", time=T0, config=conf, event_id="x")
        self.assertEqual(json.loads(msg.body)["time"], T0_TEXT)

    def test_no_zone_uses_the_process_zone(self):
        naive = dt.datetime(2026, 11, 28, 10, 5, 39)
        want = naive.astimezone().astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        msg = build_status_event(5, "REVOKED", time=naive, config=NO_TRACE, event_id="x")
        self.assertEqual(json.loads(msg.body)["time"], want)

    def test_dst_gap_and_overlap_do_not_raise(self):
        conf = cfg(naive_time_zone="America/New_York")
        for naive in (dt.datetime(2026, 3, 8, 2, 30), dt.datetime(2026, 11, 1, 1, 30)):
            with self.subTest(naive=naive):
                build_status_event(5, "REVOKED", time=naive, config=conf, event_id="x")

    def test_unknown_zone_fails_at_configuration(self):
        for bad in ("America/Nowhere", "", 5):
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    cfg(naive_time_zone=bad)


class JobIdTest(unittest.TestCase):
    def test_refused(self):
        for bad in (True, False, 0, -1, -4242, "42", "1", 42.0, None, 2**63, [1]):
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    build_status_event(bad, "STARTED", config=NO_TRACE, event_id="x")

    def test_bounds_accepted(self):
        for good in (1, 2**63 - 1):
            with self.subTest(good=good):
                msg = build_status_event(good, "STARTED", config=NO_TRACE, event_id="x")
                ev = json.loads(msg.body)
                self.assertEqual(ev["subject"], str(good))
                self.assertEqual(ev["data"]["job_id"], good)
                decode_like_service(msg.subject, msg.headers, msg.body)


class AttemptTest(unittest.TestCase):
    def test_omitted_when_none(self):
        msg = build_status_event(5, "REVOKED", time=T0, config=NO_TRACE, event_id="x")
        self.assertNotIn("attempt", json.loads(msg.body)["data"])
        self.assertIsNone(msg.attempt)

    def test_zero_is_sent(self):
        msg = build_status_event(5, "REVOKED", time=T0, attempt=0, config=NO_TRACE, event_id="x")
        self.assertEqual(json.loads(msg.body)["data"]["attempt"], 0)

    def test_refused(self):
        for bad in (-1, True, False, "1", 1.0, 2**63):
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    build_status_event(5, "REVOKED", time=T0, attempt=bad, config=NO_TRACE, event_id="x")


class WithAttemptTest(unittest.TestCase):
    def test_same_event_with_its_run(self):
        for binary in (False, True):
            conf = EventConfig(binary=binary, trace_context=lambda: (TRACEPARENT, None))
            msg = build_status_event(7, "REVOKED", time=T0, actor="watchdog", config=conf, event_id="e-1")
            out = with_attempt(msg, 1796508388265, conf)
            with self.subTest(binary=binary):
                ev = decode_like_service(out.subject, out.headers, out.body)
                self.assertEqual(ev["data"]["attempt"], 1796508388265)
                self.assertEqual(ev["data"]["actor"], "watchdog")
                self.assertEqual((out.event_id, out.headers["Nats-Msg-Id"], out.attempt), ("e-1", "e-1", 1796508388265))
                self.assertEqual(ev["attrs"]["traceparent"], TRACEPARENT)
                self.assertEqual(ev["attrs"]["time"], T0_TEXT)

    def test_checked(self):
        msg = build_status_event(7, "REVOKED", time=T0)
        for bad in (-1, True, "3", None):
            with self.assertRaises(ValueError):
                with_attempt(msg, bad)


class TraceContextTest(unittest.TestCase):
    def test_structured_top_level_attributes(self):
        conf = EventConfig(trace_context=lambda: (TRACEPARENT, "vendor=abc,other=1"))
        msg = build_status_event(5, "REVOKED", time=T0, config=conf, event_id="x")
        ev = json.loads(msg.body)
        self.assertEqual(ev["traceparent"], TRACEPARENT)
        self.assertEqual(ev["tracestate"], "vendor=abc,other=1")
        self.assertNotIn("traceparent", ev["data"])
        self.assertEqual(list(ev), ["specversion", "id", "source", "type", "subject", "time", "datacontenttype",
                                    "traceparent", "tracestate", "data"])
        self.assertEqual(set(msg.headers), {"Content-Type", "Nats-Msg-Id"})

    def test_binary_headers(self):
        conf = EventConfig(binary=True, trace_context=lambda: (TRACEPARENT, "vendor=abc"))
        msg = build_status_event(5, "REVOKED", time=T0, config=conf, event_id="x")
        self.assertEqual(msg.headers["ce-traceparent"], TRACEPARENT)
        self.assertEqual(msg.headers["ce-tracestate"], "vendor=abc")
        self.assertEqual(msg.body, b'{"job_id":5,"status":"REVOKED"}')

    def test_no_tracestate(self):
        for mode in (False, True):
            conf = EventConfig(binary=mode, trace_context=lambda: (TRACEPARENT, None))
            msg = build_status_event(5, "REVOKED", time=T0, config=conf, event_id="x")
            if mode:
                self.assertEqual(msg.headers["ce-traceparent"], TRACEPARENT)
                self.assertNotIn("ce-tracestate", msg.headers)
            else:
                ev = json.loads(msg.body)
                self.assertEqual(ev["traceparent"], TRACEPARENT)
                self.assertNotIn("tracestate", ev)

    def test_nothing_when_provider_has_nothing_fails_or_is_malformed(self):
        def boom():
            raise RuntimeError("tracing broke")

        for provider in (lambda: (None, None), boom, lambda: ("not-a-traceparent", "a=b"), lambda: (None, "a=b")):
            for mode in (False, True):
                with self.subTest(provider=provider, binary=mode):
                    conf = EventConfig(binary=mode, trace_context=provider)
                    msg = build_status_event(5, "REVOKED", time=T0, config=conf, event_id="x")
                    self.assertNotIn(b"trace", msg.body)
                    self.assertFalse([k for k in msg.headers if "trace" in k])

    def test_tracestate_with_line_break_dropped(self):
        conf = EventConfig(binary=True, trace_context=lambda: (TRACEPARENT, "a=b\r\nX-Evil: 1"))
        msg = build_status_event(5, "REVOKED", time=T0, config=conf, event_id="x")
        self.assertEqual(msg.headers["ce-traceparent"], TRACEPARENT)
        self.assertNotIn("ce-tracestate", msg.headers)


class IdAndFieldsTest(unittest.TestCase):
    def test_default_id_is_uuid4_and_msg_id(self):
        conf = EventConfig(trace_context=None)
        a = build_status_event(5, "STARTED", config=conf)
        b = build_status_event(5, "STARTED", config=conf)
        self.assertNotEqual(a.event_id, b.event_id)
        self.assertEqual(uuid.UUID(a.event_id).version, 4)
        self.assertEqual(json.loads(a.body)["id"], a.event_id)
        self.assertEqual(a.headers["Nats-Msg-Id"], a.event_id)

    def test_id_factory(self):
        conf = EventConfig(binary=True, trace_context=None, id_factory=ids("first", "second"))
        self.assertEqual(build_status_event(5, "STARTED", config=conf).headers["ce-id"], "first")
        self.assertEqual(build_status_event(5, "STARTED", config=conf).headers["Nats-Msg-Id"], "second")

    def test_empty_optional_fields_omitted(self):
        msg = build_status_event(5, "REVOKED", time=T0, previous_status="  ", dispatch_mode="", reason="",
                                 actor=None, config=NO_TRACE, event_id="x")
        self.assertEqual(json.loads(msg.body)["data"], {"job_id": 5, "status": "REVOKED"})

    def test_non_string_fields_refused(self):
        for field in ("previous_status", "dispatch_mode", "reason", "actor"):
            with self.subTest(field=field):
                with self.assertRaises(ValueError):
                    build_status_event(5, "REVOKED", time=T0, config=NO_TRACE, event_id="x", **{field: 3})

    def test_non_ascii_reason_is_utf8(self):
        msg = build_status_event(5, "FAILURE", time=T0, reason="Zeitüberschreitung", config=NO_TRACE, event_id="x")
        self.assertIn("Zeitüberschreitung".encode("utf-8"), msg.body)

    def test_reason_cut(self):
        msg = build_status_event(5, "FAILURE", time=T0, reason="x" * 50, config=cfg(max_reason_chars=10),
                                 event_id="x")
        self.assertEqual(json.loads(msg.body)["data"]["reason"], "xxxxxxxxx\u2026")

    def test_oversized_refused(self):
        conf = cfg(max_event_bytes=300)
        msg = build_status_event(5, "FAILURE", time=T0, config=conf, event_id="x")
        self.assertLessEqual(msg.size, 300)
        with self.assertRaisesRegex(ValueError, "over the limit of 300"):
            build_status_event(5, "FAILURE", time=T0, reason="y" * 400, config=conf, event_id="x")

    def test_size_counts_like_service(self):
        self.assertEqual(message_size({"ab": "cde"}, b"12345"), 5 + 2 + 3 + 4)

    def test_bad_event_id_refused(self):
        for bad in ("", "has space", "a\r\nb", 5):
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    build_status_event(5, "STARTED", config=NO_TRACE, event_id=bad)


class ConfigTest(unittest.TestCase):
    def test_refused(self):
        for kw in ({"type_prefix": "org.example"}, {"type_prefix": ".org."}, {"type_prefix": "org example."},
                   {"source": ""}, {"source": "job backend"}, {"source": "a\nb"},
                   {"subject_prefix": "job.status"}, {"subject_prefix": "job.*."}, {"subject_prefix": ""},
                   {"terminal_statuses": frozenset({"restart_requested"})},
                   {"terminal_statuses": frozenset({"bad status"})},
                   {"terminal_statuses": "success"}, {"binary": "yes"}, {"max_event_bytes": 0}, {"max_reason_chars": 0}):
            with self.subTest(kw=kw):
                with self.assertRaises(ValueError):
                    EventConfig(**kw)

    def test_terminal_statuses_normalised(self):
        self.assertEqual(EventConfig(terminal_statuses=frozenset({" REVOKED"})).terminal_statuses,
                         frozenset({"revoked"}))


if __name__ == "__main__":
    unittest.main()
