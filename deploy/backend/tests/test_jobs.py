"""JobEvents: the one-line call sites, with Antenna-shaped jobs."""

import datetime as dt
import enum
import logging
import unittest
from types import SimpleNamespace

from job_status_events import EventConfig, FlushError, JobEvents, StartResult

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
        self.ends = []
        self.lookups = []
        conf = kw.pop("config", EventConfig(trace_context=None, id_factory=ids("e-1", "e-2", "e-3"),
                                            naive_time_zone="America/New_York",
                                            terminal_statuses={"revoked", "failure", "success", "deleted"}))
        self.stamp = kw.pop("stamp", None)
        self.events = JobEvents("nats://nats:4222", config=conf, connect_options={"connect_timeout": 5},
                                on_commit=self.pending.append, publish=self.publish,
                                attempt_lookup=self.lookup, restart=kw.pop("restart", self.restart),
                                end=kw.pop("end", self.end), now=lambda: T0, **kw)
        self.publish_error = None

    def publish(self, msg):
        if self.publish_error:
            raise self.publish_error
        self.sent.append(decode_like_service(msg.subject, msg.headers, msg.body))

    def lookup(self, job_id):
        self.lookups.append(job_id)
        return self.stamp

    def restart(self, servers, job_id, **kw):
        self.restarts.append((servers, job_id, kw))
        return StartResult(job_id=job_id, attempt=kw["attempt"] or 1796508388265, path="fallback",
                           outcome="removed", event_id="e-r", reason="queue-janitor did not answer within 5s",
                           waited=5.1, deleted=["stream job_4242"], messages_discarded=7, stream_created=True)

    def end(self, servers, job_id, **kw):
        self.ends.append((job_id, kw))
        return True, self.stamp

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


class TerminalAttemptTest(unittest.TestCase):
    def test_terminal_events_carry_the_stamped_run(self):
        h = Harness(stamp=1796508388265)
        h.events.changed(antenna_job(status="REVOKED"))
        h.events.changed(antenna_job(status="STARTED"))
        h.commit()
        self.assertEqual(h.sent[0]["data"]["attempt"], 1796508388265)
        self.assertNotIn("attempt", h.sent[1]["data"], "only terminal events look the run up")
        self.assertEqual(h.lookups, [4242])

    def test_the_models_own_attempt_wins(self):
        h = Harness(stamp=99)
        h.events.changed(antenna_job(attempt=3))
        h.commit()
        self.assertEqual((h.sent[0]["data"]["attempt"], h.lookups), (3, []))

    def test_no_stamp_no_attempt(self):
        h = Harness(stamp=None)
        h.events.changed(antenna_job(status="FAILURE"))
        h.commit()
        self.assertNotIn("attempt", h.sent[0]["data"])


class EndQueueTest(unittest.TestCase):
    def test_teardown_then_the_terminal_status_with_the_run(self):
        h = Harness(stamp=1796508388265)
        self.assertTrue(h.events.end_queue(4242, antenna_job(status="SUCCESS")))
        ((job_id, kw),) = h.ends
        self.assertEqual((job_id, kw["stream_name"], kw["consumer_name"], kw["dlq_consumer_name"]),
                         (4242, "job_4242", "job-4242-consumer", "job-4242-dlq"))
        h.commit()
        (ev,) = h.sent
        self.assertEqual((ev["data"]["status"], ev["data"]["attempt"]), ("SUCCESS", 1796508388265))
        self.assertEqual(h.lookups, [], "the run was read before the teardown")

    def test_a_deleted_row_is_announced_deleted(self):
        h = Harness(stamp=None)
        h.events.end_queue(4242, None)
        h.commit()
        self.assertEqual(h.sent[0]["data"]["status"], "DELETED")

    def test_not_terminal_not_announced(self):
        h = Harness()
        h.events.end_queue(4242, antenna_job(status="STARTED"))
        h.commit()
        self.assertEqual(h.sent, [])

    def test_never_raises(self):
        def broken(*a, **kw):
            raise OSError("nats down")
        h = Harness(end=broken)
        with self.assertLogs("job_status_events", "WARNING"):
            self.assertFalse(h.events.end_queue(4242, antenna_job(status="REVOKED")))
        h.commit()
        self.assertEqual(h.sent[0]["data"]["status"], "REVOKED", "announced anyway: the service cleans up")


class RestartTest(unittest.TestCase):
    def test_without_attempt(self):
        h = Harness()
        done = h.events.restart(antenna_job(status="PENDING"), actor="user")
        self.assertEqual((done["path"], done["outcome"], done["messages_discarded"]), ("fallback", "removed", 7))
        ((servers, job_id, kw),) = h.restarts
        self.assertEqual((servers, job_id, kw["attempt"]), ("nats://nats:4222", 4242, None))
        self.assertEqual(kw["previous_status"], "PENDING")
        self.assertEqual(kw["dispatch_mode"], "async_api")
        self.assertEqual(kw["time"], T0)
        self.assertEqual(kw["connect_options"], {"connect_timeout": 5, "max_reconnect_attempts": 1})
        self.assertEqual((kw["settings"].handshake_wait, kw["settings"].lease), (5.0, 12.0))

    def test_with_attempt(self):
        h = Harness()
        h.events.restart(antenna_job(attempt=5))
        self.assertEqual(h.restarts[0][2]["attempt"], 5)

    def test_the_reason_goes_to_the_jobs_log_at_info(self):
        h = Harness()
        job_log = logging.getLogger("ami.jobs.4242")
        with self.assertLogs(job_log, "DEBUG") as logs:
            h.events.restart(antenna_job(logger=job_log))
        self.assertEqual([r.levelname for r in logs.records], ["INFO"])
        self.assertIn("did not answer within 5s; flushed the leftover queue here instead", logs.output[0])
        self.assertIn("deleted stream job_4242, 7 messages discarded", logs.output[0])

    def test_errors_propagate(self):
        def refuse(*a, **kw):
            raise FlushError("no answer", job_id=4242, attempt=None, event_ids=["x"])
        h = Harness(restart=refuse)
        with self.assertRaises(FlushError):
            h.events.restart(antenna_job())

    def test_settings_are_checked(self):
        with self.assertRaises(ValueError):
            JobEvents("nats://x", lease=1)
        with self.assertRaises(ValueError):
            JobEvents("nats://x", handshake_wait=0)


if __name__ == "__main__":
    unittest.main()
