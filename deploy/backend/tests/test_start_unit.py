"""The Start path's pure parts: run numbers, leases, records, ack subjects, times."""

import datetime as dt
import json
import unittest

from job_status_events import choose_attempt, parse_ack_subject
from job_status_events.bucket import BucketSettings
from job_status_events.handshake import StartResult, StartSettings, summary
from job_status_events.jsapi import format_time_ns, parse_time_ns, stamp_of
from job_status_events.records import LeaseWatch, claimed, default_owner, holds, known_attempt, released
from job_status_events.rounds import from_earlier_round


class AttemptTest(unittest.TestCase):
    def test_server_clock_unless_something_higher_is_known(self):
        self.assertEqual(choose_attempt(1_796_508_388_265), 1_796_508_388_265)
        self.assertEqual(choose_attempt(1_796_508_388_265, None, 1_796_508_388_265), 1_796_508_388_266)
        self.assertEqual(choose_attempt(1_000, 5_000, None), 5_001, "a clock set back never repeats a number")
        self.assertEqual(choose_attempt(0, 3), 4)

    def test_known_attempt_of_a_record(self):
        self.assertIsNone(known_attempt(None))
        self.assertIsNone(known_attempt({"v": 2, "status": "revoked"}))
        self.assertEqual(known_attempt({"attempt": 4, "restart_attempt": 7}), 7)
        self.assertEqual(known_attempt({"attempt": True}), None, "a bool is no attempt")


class LeaseWatchTest(unittest.TestCase):
    def test_live_for_its_ttl_from_when_the_revision_was_first_seen(self):
        now = [100.0]
        w = LeaseWatch("mine", 12.0, lambda: now[0])
        rec = {"lease": {"owner": "queue-janitor-1", "token": "theirs", "ttl": 12_000_000_000}}
        self.assertEqual(w.live_for(rec, 7), 12.0)
        now[0] = 110.0
        self.assertAlmostEqual(w.live_for(rec, 7), 2.0)
        self.assertAlmostEqual(w.live_for(rec, 8), 12.0, msg="a renewal (new revision) counts again")
        now[0] = 112.5
        self.assertEqual(w.live_for(rec, 7), 0.0)

    def test_own_token_and_no_lease_never_block(self):
        w = LeaseWatch("mine", 12.0, lambda: 0.0)
        self.assertEqual(w.live_for({"lease": {"token": "mine", "ttl": 12_000_000_000}}, 3), 0.0)
        self.assertEqual(w.live_for({"v": 2}, 3), 0.0)
        self.assertEqual(w.live_for(None, 0), 0.0)

    def test_a_version_1_lease_without_ttl_lasts_the_default(self):
        w = LeaseWatch("mine", 12.0, lambda: 5.0)
        self.assertEqual(w.live_for({"lease": {"owner": "old", "until": "2026-01-01T00:00:00Z"}}, 1), 12.0)


class RecordTest(unittest.TestCase):
    SERVICE = {"v": 2, "attempt": 5, "time": "2026-11-28T15:05:39.25Z", "stored": "2026-11-28T15:05:39.3Z",
               "event_id": "ev-1", "status": "revoked", "state": "terminal", "done": True,
               "cleaned_at": "2026-11-28T15:05:40Z", "future_field": {"kept": True}}

    def test_claim_keeps_every_field_and_adds_the_lease(self):
        now = dt.datetime(2026, 11, 28, 15, 6, 0, tzinfo=dt.timezone.utc)
        out = claimed(self.SERVICE, owner="backend:web-1:42", token="t" * 24, lease_seconds=12, now=now)
        self.assertEqual({k: v for k, v in out.items() if k != "lease"}, self.SERVICE)
        self.assertEqual(out["lease"], {"owner": "backend:web-1:42", "token": "t" * 24, "ttl": 12_000_000_000,
                                        "until": "2026-11-28T15:06:12.000000Z"})
        self.assertTrue(holds(out, "t" * 24))
        self.assertFalse(holds(out, "other"))
        self.assertEqual(claimed(None, owner="o", token="t", lease_seconds=12)["v"], 3, "a new record is v3")

    def test_release_records_the_restart_as_done(self):
        held = claimed(self.SERVICE, owner="o", token="t", lease_seconds=12)
        out = released(held, attempt=1_796_508_388_265, event_id="req-1")
        self.assertNotIn("lease", out)
        self.assertEqual((out["attempt"], out["restart_attempt"], out["restart_event_id"], out["restart_done"]),
                         (1_796_508_388_265, 1_796_508_388_265, "req-1", True))
        self.assertEqual(out["state"], "flushed", "live for the reconciler")
        for key in ("v", "time", "stored", "event_id", "status", "done", "cleaned_at", "future_field"):
            self.assertEqual(out[key], self.SERVICE[key], key)
        self.assertEqual(released({"attempt": 9}, attempt=4, event_id="x")["attempt"], 9, "never lowered")
        json.dumps(out)

    def test_owner(self):
        self.assertRegex(default_owner(), r"^backend:[^:]+:\d+$")


class AckSubjectTest(unittest.TestCase):
    def test_both_formats(self):
        v1 = parse_ack_subject("$JS.ACK.job_7.job-7-consumer.1.12.3.1796508388265123456.4")
        self.assertEqual((v1.stream, v1.consumer, v1.delivered, v1.stream_seq, v1.consumer_seq, v1.timestamp_ns),
                         ("job_7", "job-7-consumer", 1, 12, 3, 1796508388265123456))
        v2 = parse_ack_subject("$JS.ACK._.ACCHASH.job_7.job-7-consumer.2.12.3.1796508388265123456.4.abc")
        self.assertEqual((v2.stream, v2.delivered, v2.timestamp_ns), ("job_7", 2, 1796508388265123456))

    def test_not_an_ack_subject(self):
        for s in (None, "", "_INBOX.x", "$JS.ACK.job_7", "$JS.ACK.a.b.c.d.e.f.g", "$JS.ACK.job_7.c.x.1.1.1.1"):
            self.assertIsNone(parse_ack_subject(s), s)

    def test_earlier_round(self):
        ack = parse_ack_subject("$JS.ACK.job_7.job-7-consumer.1.12.3.1000.4")
        self.assertTrue(from_earlier_round(ack, 1001))
        self.assertFalse(from_earlier_round(ack, 1000))
        self.assertFalse(from_earlier_round(ack, None))


class TimeTest(unittest.TestCase):
    def test_nats_times(self):
        self.assertEqual(parse_time_ns("1970-01-01T00:00:01.5Z"), 1_500_000_000)
        ns = parse_time_ns("2026-12-05T22:06:22.701092832Z")
        self.assertEqual(format_time_ns(ns), "2026-12-05T22:06:22.701092832Z")
        self.assertEqual(parse_time_ns("2026-12-05T23:06:22.701092832+01:00"), ns)
        for bad in (None, "", "0001-01-01T00:00:00Z", "yesterday"):
            self.assertIsNone(parse_time_ns(bad), bad)

    def test_stamp(self):
        self.assertEqual(stamp_of({"job_attempt": "12", "_nats.ver": "2.15.2"}), 12)
        self.assertIsNone(stamp_of({"job_attempt": "x"}))
        self.assertIsNone(stamp_of(None))


class SettingsTest(unittest.TestCase):
    def test_bucket_as_the_service_creates_it(self):
        cfg = BucketSettings().stream_config()
        self.assertEqual((cfg["name"], cfg["subjects"], cfg["max_msgs_per_subject"], cfg["storage"]),
                         ("KV_queue_janitor_jobs", ["$KV.queue_janitor_jobs.>"], 1, "file"))
        self.assertEqual((cfg["max_age"], cfg["duplicate_window"], cfg["num_replicas"]),
                         (30 * 24 * 3600 * 10**9, 120 * 10**9, 1))
        self.assertTrue(cfg["allow_direct"] and cfg["deny_delete"] and cfg["allow_rollup_hdrs"])
        self.assertEqual(BucketSettings(ttl=60).stream_config()["duplicate_window"], 60 * 10**9)

    def test_bad_settings(self):
        for kw in ({"lease": 3}, {"handshake_wait": 0}, {"fallback_max_wait": -1}, {"stream_pattern": "job"}):
            with self.subTest(kw=kw), self.assertRaises(ValueError):
                StartSettings(**kw)

    def test_summary(self):
        r = StartResult(job_id=7, attempt=11, path="fallback", outcome="removed", event_id="e",
                        reason="queue-janitor did not answer within 5s", waited=5.14, deleted=["stream job_7"],
                        messages_discarded=3, stream_created=True, purged_after_create=2)
        self.assertEqual(summary(r), "job 7: queue-janitor did not answer within 5s; flushed the leftover queue here "
                                     "instead (removed): deleted stream job_7, 3 messages discarded; new run attempt "
                                     "11, its stream created stamped (and purged of 2 messages that came back) "
                                     "(after 5.1s)")


if __name__ == "__main__":
    unittest.main()
