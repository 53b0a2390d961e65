import json
import unittest

from job_status_events import EventConfig, StatusPublisher

from .helpers import T0, decode_like_service, ids


class Recorder:
    def __init__(self, failures=0, error=ConnectionError("nats: timeout")):
        self.calls = []
        self.failures = failures
        self.error = error

    async def publish(self, subject, body, headers):
        self.calls.append((subject, body, dict(headers)))
        headers["mutated"] = "by transport"  # must not leak into the message
        if len(self.calls) <= self.failures:
            raise self.error


class StatusPublisherTest(unittest.IsolatedAsyncioTestCase):
    def setUp(self):
        self.sleeps = []

    async def sleep(self, seconds):
        self.sleeps.append(seconds)

    def publisher(self, rec, **kw):
        conf = EventConfig(trace_context=None, id_factory=ids("ev-1", "ev-2"))
        return StatusPublisher(rec.publish, conf, sleep=self.sleep, **kw)

    async def test_publishes_what_it_built(self):
        rec = Recorder()
        msg = await self.publisher(rec).publish_status(42, "REVOKED", time=T0, attempt=1, actor="watchdog")
        self.assertEqual(rec.calls, [("job.status.revoked", msg.body,
                                      {"Content-Type": "application/cloudevents+json", "Nats-Msg-Id": "ev-1"})])
        self.assertNotIn("mutated", msg.headers)
        subject, body, headers = rec.calls[0]
        got = decode_like_service(subject, headers, body)
        self.assertEqual(got["data"], {"job_id": 42, "status": "REVOKED", "attempt": 1, "actor": "watchdog"})
        self.assertEqual(self.sleeps, [])

    async def test_retry_sends_the_same_message(self):
        rec = Recorder(failures=2)
        with self.assertLogs("job_status_events", "WARNING") as logs:
            msg = await self.publisher(rec, tries=3, retry_delay=0.25).publish_status(42, "FAILURE", time=T0)
        self.assertEqual(len(logs.output), 2)
        self.assertIn("job.status.failure for job 42 failed (try 1 of 3), retrying in 0.25s", logs.output[0])
        self.assertEqual(len(rec.calls), 3)
        self.assertEqual(rec.calls[0], rec.calls[1])
        self.assertEqual(rec.calls[1], rec.calls[2])
        self.assertEqual(rec.calls[2][2]["Nats-Msg-Id"], "ev-1")
        self.assertEqual(json.loads(rec.calls[2][1])["id"], "ev-1")
        self.assertEqual(msg.event_id, "ev-1")
        self.assertEqual(self.sleeps, [0.25, 0.5])

    async def test_gives_up_after_tries(self):
        rec = Recorder(failures=10)
        with self.assertLogs("job_status_events", "WARNING") as logs:
            with self.assertRaisesRegex(ConnectionError, "nats: timeout"):
                await self.publisher(rec, tries=2).publish_status(42, "FAILURE", time=T0)
        self.assertIn("ERROR:job_status_events:publishing job.status.failure for job 42 failed 2 times", logs.output[-1])
        self.assertEqual(len(rec.calls), 2)
        self.assertEqual(self.sleeps, [0.5])

    async def test_invalid_event_never_published(self):
        rec = Recorder()
        with self.assertRaises(ValueError):
            await self.publisher(rec).publish_status(42, "FAILURE")  # no time
        self.assertEqual(rec.calls, [])

    def test_bad_settings(self):
        with self.assertRaises(ValueError):
            StatusPublisher(Recorder().publish, tries=0)
        with self.assertRaises(ValueError):
            StatusPublisher(Recorder().publish, retry_delay=-1)


if __name__ == "__main__":
    unittest.main()
