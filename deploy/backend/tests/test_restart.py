"""The Start path's handshake, against a core-NATS-like fake bus."""

import asyncio
import json
import unittest

from job_status_events import (EventConfig, FlushError, FlushTimeout, RestartSuperseded, StatusPublisher,
                               parse_flushed, request_restart)

from .helpers import T0, T0_TEXT, FakeBus, flushed_event, ids

JOB = 42
FLUSHED = "job.queue.flushed.42"
SHORT = 0.05  # seconds: a try that nobody answers


def restart_id(body: bytes) -> str:
    return json.loads(body)["id"]


def answer_each(outcome="removed", **kw):
    """A service that answers every restart request at once."""
    def respond(subject, body, headers):
        return [(FLUSHED, *flushed_event(JOB, restart_id(body), outcome, attempt=4, **kw))]
    return respond


class RequestRestartTest(unittest.IsolatedAsyncioTestCase):
    def publisher(self, bus, **kw):
        conf = EventConfig(trace_context=None, id_factory=ids("r-1", "r-2", "r-3", "r-4"))
        kw.setdefault("tries", 1)
        return StatusPublisher(bus.publish, conf, **kw)

    async def restart(self, bus, **kw):
        kw.setdefault("time", T0)
        kw.setdefault("timeout", SHORT)
        return await request_restart(self.publisher(bus), bus.subscribe, JOB, kw.pop("attempt", 4), **kw)

    def assertNoTaskLeft(self):
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        self.assertEqual(others, [])

    async def test_happy_path(self):
        bus = FakeBus(answer_each(deleted=["consumer job_42/job-42-consumer", "stream job_42"], discarded=44286))
        data = await self.restart(bus, actor="alice", previous_status="REVOKED", timeout=5)
        self.assertEqual(data, {
            "job_id": 42, "attempt": 4, "status": "restart_requested", "cause_event_id": "r-1",
            "outcome": "removed", "stream": "job_42", "stream_found": True,
            "deleted": ["consumer job_42/job-42-consumer", "stream job_42"], "messages_discarded": 44286,
            "consumers_removed": 0, "duration_ms": 1.5,
        })
        self.assertEqual(bus.calls, [("subscribe", FLUSHED), ("publish", "job.status.restart_requested"),
                                     ("aclose", FLUSHED)])
        (ev,) = bus.restart_events()
        self.assertEqual(ev["attrs"]["id"], "r-1")
        self.assertEqual(ev["attrs"]["time"], T0_TEXT)
        self.assertEqual(ev["data"], {"job_id": 42, "status": "RESTART_REQUESTED", "previous_status": "REVOKED",
                                      "attempt": 4, "actor": "alice"})
        self.assertNoTaskLeft()

    async def test_stale_answer_means_do_not_publish(self):
        bus = FakeBus(answer_each(outcome="stale"))
        with self.assertRaises(RestartSuperseded) as caught:
            await self.restart(bus, timeout=5)
        self.assertIsInstance(caught.exception, FlushError)
        self.assertIn("do not publish", str(caught.exception))
        self.assertEqual(caught.exception.event_ids, ["r-1"])
        self.assertEqual(bus.calls[-1], ("aclose", FLUSHED))
        self.assertNoTaskLeft()

    async def test_subscribes_before_publishing(self):
        # On this bus, as on core NATS, an answer published while nobody
        # subscribes is lost: the happy path only works in this order.
        bus = FakeBus(answer_each())
        await self.restart(bus, timeout=5)
        kinds = [c[0] for c in bus.calls]
        self.assertLess(kinds.index("subscribe"), kinds.index("publish"))
        self.assertEqual(bus.subs[0].subject, FLUSHED)

    async def test_other_causes_and_garbage_ignored(self):
        def respond(subject, body, headers):
            mine = restart_id(body)
            return [
                (FLUSHED, *flushed_event(JOB, "someone-elses-restart", "removed", attempt=3)),
                (FLUSHED, {"Content-Type": "application/cloudevents+json"}, b"not json"),
                (FLUSHED, {"Content-Type": "application/cloudevents+json"}, b'{"data": "no object"}'),
                (FLUSHED, *flushed_event(JOB, mine, "nothing_to_remove", attempt=4)),
            ]
        bus = FakeBus(respond)
        with self.assertLogs("job_status_events", "WARNING") as logs:
            data = await self.restart(bus, timeout=5)
        self.assertEqual((data["cause_event_id"], data["outcome"]), ("r-1", "nothing_to_remove"))
        self.assertEqual(sum("unreadable" in line for line in logs.output), 2)

    async def test_only_other_causes_times_out(self):
        bus = FakeBus(lambda s, b, h: [(FLUSHED, *flushed_event(JOB, "other", "removed"))])
        with self.assertRaises(FlushTimeout):
            await request_restart(self.publisher(bus), bus.subscribe, JOB, 4, time=T0, timeout=SHORT, tries=1)
        self.assertEqual(len(bus.published), 1)

    async def test_timeout_then_retry_answered_already_done(self):
        def respond(subject, body, headers):
            if len(bus.published) == 1:
                return []  # the first request's answer is lost
            return [(FLUSHED, *flushed_event(JOB, restart_id(body), "already_done", attempt=4))]
        bus = FakeBus(respond)
        with self.assertLogs("job_status_events", "WARNING") as logs:
            data = await self.restart(bus, tries=3)
        self.assertEqual((data["outcome"], data["cause_event_id"]), ("already_done", "r-2"))
        first, second = bus.restart_events()
        self.assertEqual((first["attrs"]["id"], second["attrs"]["id"]), ("r-1", "r-2"))
        self.assertEqual(first["data"], second["data"])  # same attempt, same fields
        self.assertEqual(first["attrs"]["time"], second["attrs"]["time"])  # same transition time
        self.assertEqual(bus.published[1][2]["Nats-Msg-Id"], "r-2")  # not de-duplicated away
        self.assertIn("try 1 of 3", logs.output[0])
        self.assertEqual(bus.calls[-1], ("aclose", FLUSHED))
        self.assertEqual([c[0] for c in bus.calls].count("subscribe"), 1)

    async def test_late_answer_to_earlier_try_accepted(self):
        def respond(subject, body, headers):
            if len(bus.published) == 1:
                return []
            return [(FLUSHED, *flushed_event(JOB, "r-1", "removed", attempt=4))]
        bus = FakeBus(respond)
        with self.assertLogs("job_status_events", "WARNING"):
            data = await self.restart(bus, tries=3)
        self.assertEqual(data["cause_event_id"], "r-1")
        self.assertEqual(len(bus.published), 2)

    async def test_all_tries_time_out(self):
        bus = FakeBus()
        with self.assertLogs("job_status_events", "WARNING"):
            with self.assertRaises(FlushTimeout) as caught:
                await self.restart(bus, tries=3)
        err = caught.exception
        self.assertIsInstance(err, FlushError)
        self.assertEqual((err.job_id, err.attempt, err.event_ids), (42, 4, ["r-1", "r-2", "r-3"]))
        text = str(err)
        for part in ("job 42", FLUSHED, "attempt 4", "after 3 tries of 0.05s", "r-1, r-2, r-3",
                     "do not publish the new round", "queue-janitor is running",
                     "nats consumer info JOB_EVENTS queue-janitor"):
            self.assertIn(part, text)
        self.assertEqual(len(bus.published), 3)
        self.assertEqual(bus.calls[-1], ("aclose", FLUSHED))
        self.assertTrue(bus.subs[0].closed)
        self.assertNoTaskLeft()

    async def test_publish_failure_still_cleans_up(self):
        bus = FakeBus(answer_each())
        bus.publish_error = ConnectionError("no responders")
        with self.assertLogs("job_status_events", "ERROR"):
            with self.assertRaisesRegex(FlushError, "no responders"):
                await self.restart(bus)
        self.assertEqual(bus.calls, [("subscribe", FLUSHED), ("publish", "job.status.restart_requested"),
                                     ("aclose", FLUSHED)])
        self.assertNoTaskLeft()

    async def test_close_failure_does_not_hide_the_answer(self):
        bus = FakeBus(answer_each())
        bus.aclose_error = RuntimeError("connection closed")
        with self.assertLogs("job_status_events", "WARNING") as logs:
            # The reader must be stopped even though the iteration never ends.
            data = await asyncio.wait_for(self.restart(bus, timeout=5), 2)
        self.assertEqual(data["outcome"], "removed")
        self.assertIn("closing the subscription to job.queue.flushed.42 failed", "\n".join(logs.output))
        self.assertNoTaskLeft()

    async def test_subscription_ending_is_not_a_timeout(self):
        bus = FakeBus()

        async def end_instead(subject, body, headers):
            bus.published.append((subject, body, headers))
            await bus.subs[0].aclose()  # the connection went away
        bus.publish = end_instead
        loop = asyncio.get_running_loop()
        started = loop.time()
        with self.assertRaisesRegex(FlushError, "ended before the answer") as caught:
            await request_restart(self.publisher(bus), bus.subscribe, JOB, 4, time=T0, timeout=5, tries=3)
        self.assertNotIsInstance(caught.exception, FlushTimeout)
        self.assertLess(loop.time() - started, 1)
        self.assertNoTaskLeft()

    async def test_subscription_error_is_reported(self):
        bus = FakeBus(lambda s, b, h: bus.subs[0].queue.put_nowait(OSError("socket reset")) or [])
        with self.assertRaisesRegex(FlushError, "reading job.queue.flushed.42 failed: socket reset") as caught:
            await self.restart(bus, timeout=5)
        self.assertIsInstance(caught.exception.__cause__, OSError)
        self.assertTrue(bus.subs[0].closed)
        self.assertNoTaskLeft()

    async def test_subscribe_failure_publishes_nothing(self):
        bus = FakeBus(answer_each())
        bus.subscribe_error = ConnectionError("not connected")
        with self.assertRaises(ConnectionError):
            await self.restart(bus)
        self.assertEqual(bus.calls, [("subscribe", FLUSHED)])
        self.assertEqual(bus.published, [])

    async def test_bad_arguments_touch_nothing(self):
        bus = FakeBus(answer_each())
        for kw in ({"attempt": -1}, {"attempt": True}, {"time": None}, {"tries": 0},
                   {"timeout": 0}, {"flushed_subject": "job.queue.flushed"}):
            with self.subTest(kw=kw):
                with self.assertRaises(ValueError):
                    await self.restart(bus, **kw)
        with self.assertRaises(ValueError):
            await request_restart(self.publisher(bus), bus.subscribe, "42", 4, time=T0)
        self.assertEqual(bus.calls, [])

    async def test_without_attempt(self):
        # Antenna today: no attempt counter. The request carries none, and the
        # answer (attempt absent) is matched by its cause_event_id.
        def respond(subject, body, headers):
            return [(FLUSHED, *flushed_event(JOB, restart_id(body), "nothing_to_remove"))]
        bus = FakeBus(respond)
        data = await self.restart(bus, attempt=None, timeout=5)
        self.assertEqual(data["outcome"], "nothing_to_remove")
        (ev,) = bus.restart_events()
        self.assertNotIn("attempt", ev["data"])
        self.assertNoTaskLeft()

    async def test_without_attempt_times_out_with_a_clear_error(self):
        bus = FakeBus()
        with self.assertRaises(FlushTimeout) as caught:
            await self.restart(bus, attempt=None, tries=2)
        self.assertIsNone(caught.exception.attempt)
        self.assertIn("no attempt", str(caught.exception))
        self.assertEqual(caught.exception.event_ids, ["r-1", "r-2"])

    async def test_older_attempt_and_repeated_answers_ignored(self):
        # An answer naming an older attempt is not this Start's, even with a
        # matching cause; a repeated already_done answer after ours is harmless.
        def respond(subject, body, headers):
            cause = restart_id(body)
            return [(FLUSHED, *flushed_event(JOB, cause, "removed", attempt=3)),
                    (FLUSHED, *flushed_event(JOB, "someone-else", "removed", attempt=4)),
                    (FLUSHED, *flushed_event(JOB, cause, "already_done", attempt=4)),
                    (FLUSHED, *flushed_event(JOB, cause, "already_done", attempt=4))]
        bus = FakeBus(respond)
        data = await self.restart(bus, attempt=4, timeout=5)
        self.assertEqual((data["outcome"], data["attempt"], data["cause_event_id"]), ("already_done", 4, "r-1"))
        self.assertNoTaskLeft()

    async def test_publish_failure_is_a_flush_error(self):
        bus = FakeBus(answer_each())
        bus.publish_error = ConnectionError("no responders: is there a JOB_EVENTS stream?")
        with self.assertRaises(FlushError) as caught:
            await self.restart(bus)
        self.assertIn("could not publish restart_requested", str(caught.exception))
        self.assertIsInstance(caught.exception.__cause__, ConnectionError)
        self.assertEqual(bus.calls[-1], ("aclose", FLUSHED))
        self.assertNoTaskLeft()

    async def test_custom_flushed_subject(self):
        def respond(subject, body, headers):
            return [("acme.flushed.42", *flushed_event(JOB, restart_id(body)))]
        bus = FakeBus(respond)
        data = await self.restart(bus, flushed_subject="acme.flushed.{id}", timeout=5)
        self.assertEqual(data["cause_event_id"], "r-1")
        self.assertEqual(bus.calls[0], ("subscribe", "acme.flushed.42"))

    async def test_kept_later_run_is_returned_with_a_warning(self):
        bus = FakeBus(answer_each("kept_later_run"))
        with self.assertLogs("job_status_events", "WARNING") as logs:
            data = await self.restart(bus, timeout=5)
        self.assertEqual(data["outcome"], "kept_later_run")
        self.assertIn("kept resources of a later run", logs.output[0])


class ParseFlushedTest(unittest.TestCase):
    def test_structured(self):
        headers, body = flushed_event(7, "c-1", "removed")
        self.assertEqual(parse_flushed(headers, body)["cause_event_id"], "c-1")

    def test_header_names_any_case(self):
        _, body = flushed_event(7, "c-1")
        self.assertEqual(parse_flushed({"content-type": "application/cloudevents+json"}, body)["job_id"], 7)
        self.assertEqual(parse_flushed(None, body)["job_id"], 7)  # no headers: still a JSON event

    def test_data_base64(self):
        body = json.dumps({"specversion": "1.0", "id": "a", "data_base64": "eyJqb2JfaWQiOiA3fQ=="}).encode()
        self.assertEqual(parse_flushed({"Content-Type": "application/cloudevents+json"}, body), {"job_id": 7})

    def test_binary(self):
        headers = {"ce-specversion": "1.0", "ce-id": "a", "Content-Type": "application/json"}
        self.assertEqual(parse_flushed(headers, b'{"cause_event_id":"c-2"}'), {"cause_event_id": "c-2"})

    def test_unreadable(self):
        ce = {"Content-Type": "application/cloudevents+json"}
        for body in (b"", b"\xff\xfe", b"[]", b'"x"', b'{"data": [1]}', b'{"data_base64": "!!"}', b"{}"):
            with self.subTest(body=body):
                self.assertIsNone(parse_flushed(ce, body))
        self.assertIsNone(parse_flushed({"ce-specversion": "1.0"}, b"[1]"))


if __name__ == "__main__":
    unittest.main()
