"""JobEvents: the one-line call sites, with Antenna-shaped jobs."""

import datetime as dt
import enum
import json
import unittest
from types import SimpleNamespace

from job_status_events import EventConfig, FlushError, JobEvents

from .helpers import T0, T0_TEXT, decode_like_service, ids


class State(str, enum.Enum):  # like Antenna's JobState(str, OrderedEnum)
    REVOKED = "REVOKED"
    STARTED = "STARTED"


def antenna_job(**kw):
    """An Antenna Job as far as JobEvents reads it: no attempt field."""
    kw.setdefault("pk", 4242)
    kw.setdefault("status", "REVOKED")
    kw.setdefault("dispatch_mode", "async_api")
    return SimpleNamespace(**kw)


class Harness:
    def __init__(self, **kw):
        self.pending = []     # callbacks registered with on_commit
        self.sent = []
        self.restarts = []
        conf = kw.pop("config", EventConfig(trace_context=None, id_factory=ids("e-1", "e-2", "e-3"),
                                            naive_time_zone="America/New_York",
                                            terminal_statuses={"revoked", "failure", "success", "deleted"}))
        self.events = JobEvents("nats://nats:4222", config=conf, connect_options={"connect_timeout": 5},
                                on_commit=self.pending.append, publish=self.publish,
                                restart=kw.pop("restart", self.restart), now=lambda: T0, **kw)
        self.publish_error = None

    def publish(self, msg):
        if self.publish_error:
            raise self.publish_error
        self.sent.append(decode_like_service(msg.subject, msg.headers, msg.body))

    def restart(self, servers, job_id, attempt, **kw):
        self.restarts.append((servers, job_id, attempt, kw))
        return {"outcome": "removed"}

    def commit(self):
        for fn in self.pending:
            fn()
        self.pending.clear()


class ChangedTest(unittest.TestCase):
    def test_built_now_sent_on_commit(self):
        h = Harness()
        job = antenna_job(status=State.REVOKED)
        msg = h.events.changed(job, previous_status="CANCELING", actor="user@example.org")
        self.assertEqual(msg.subject, "job.status.revoked")
        self.assertEqual(h.sent, [])            # nothing before the commit
        job.status = State.STARTED              # a later change does not alter the event
        h.commit()
        (ev,) = h.sent
        self.assertEqual(ev["attrs"]["time"], T0_TEXT)
        self.assertEqual(ev["data"], {"job_id": 4242, "status": "REVOKED", "previous_status": "CANCELING",
                                      "dispatch_mode": "async_api", "actor": "user@example.org"})

    def test_antennas_naive_time_accepted(self):
        h = Harness()
        h.events.changed(antenna_job(status="FAILURE"), at=dt.datetime(2026, 7, 22, 10, 0, 0))
        h.commit()
        self.assertEqual(h.sent[0]["attrs"]["time"], "2026-07-22T14:00:00.000000Z")

    def test_attempt_sent_when_the_model_has_one(self):
        h = Harness()
        h.events.changed(antenna_job(attempt=3))
        h.commit()
        self.assertEqual(h.sent[0]["data"]["attempt"], 3)

    def test_never_raises(self):
        h = Harness()
        with self.assertLogs("job_status_events", "ERROR"):
            self.assertIsNone(h.events.changed(antenna_job(pk=None)))
        h.publish_error = ConnectionError("nats down")
        h.events.changed(antenna_job())
        with self.assertLogs("job_status_events", "ERROR") as logs:
            h.commit()
        self.assertIn("could not publish job.status.revoked", logs.output[0])

    def test_deleted(self):
        h = Harness()
        h.events.deleted(antenna_job(status="SUCCESS"), actor="admin")
        h.commit()
        self.assertEqual(h.sent[0]["data"]["status"], "DELETED")
        self.assertEqual(h.sent[0]["data"]["previous_status"], "SUCCESS")
        self.assertEqual(h.sent[0]["attrs"]["time"], T0_TEXT)


class RestartTest(unittest.TestCase):
    def test_without_attempt(self):
        h = Harness()
        self.assertEqual(h.events.restart(antenna_job(status="PENDING"), actor="user"), {"outcome": "removed"})
        ((servers, job_id, attempt, kw),) = h.restarts
        self.assertEqual((servers, job_id, attempt), ("nats://nats:4222", 4242, None))
        self.assertEqual(kw["previous_status"], "PENDING")
        self.assertEqual(kw["dispatch_mode"], "async_api")
        self.assertEqual(kw["time"], T0)
        self.assertEqual(kw["connect_options"], {"connect_timeout": 5, "max_reconnect_attempts": 1})

    def test_with_attempt(self):
        h = Harness()
        h.events.restart(antenna_job(attempt=5))
        self.assertEqual(h.restarts[0][2], 5)

    def test_errors_propagate(self):
        def refuse(*a, **kw):
            raise FlushError("no answer", job_id=4242, attempt=None, event_ids=["x"])
        h = Harness(restart=refuse)
        with self.assertRaises(FlushError):
            h.events.restart(antenna_job())


if __name__ == "__main__":
    unittest.main()
