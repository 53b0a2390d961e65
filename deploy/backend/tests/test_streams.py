import unittest

from job_status_events import (
    ATTEMPT_METADATA_KEY,
    advisory_stream_config,
    attempt_metadata,
    dlq_consumer_config,
    task_consumer_config,
    task_stream_config,
)


class StreamConfigTest(unittest.TestCase):
    def test_stamped_layout(self):
        self.assertEqual(ATTEMPT_METADATA_KEY, "job_attempt")
        self.assertEqual(task_stream_config(4242, 3), {
            "name": "job_4242",
            "subjects": ["job.4242.tasks"],
            "max_age": 86400.0,
            "metadata": {"job_attempt": "3"},
        })

    def test_without_attempt_no_metadata(self):
        self.assertNotIn("metadata", task_stream_config(7, None))
        self.assertNotIn("metadata", task_consumer_config(7, None))
        self.assertNotIn("metadata", dlq_consumer_config(7, None))

    def test_attempt_zero_stamped(self):
        self.assertEqual(task_stream_config(7, 0)["metadata"], {"job_attempt": "0"})
        self.assertEqual(attempt_metadata(12), {"job_attempt": "12"})

    def test_custom_patterns(self):
        cfg = task_stream_config(7, 1, stream_pattern="tasks-{id}", subject_pattern="t.{id}.>", max_age=3600)
        self.assertEqual((cfg["name"], cfg["subjects"], cfg["max_age"]), ("tasks-7", ["t.7.>"], 3600.0))

    def test_antennas_settings_are_the_defaults(self):
        # ami/ml/orchestration/nats_queue.py at 731cc2a2: TaskQueueManager._ensure_stream,
        # _ensure_consumer (NATS_TASK_TTR=300, NATS_MAX_DELIVER=2, NATS_MAX_ACK_PENDING=1000),
        # _setup_advisory_stream, and get_dead_letter_image_ids' pull_subscribe.
        self.assertEqual(task_stream_config(4242), {
            "name": "job_4242", "subjects": ["job.4242.tasks"], "max_age": 86400.0,
        })
        self.assertEqual(task_consumer_config(4242), {
            "durable_name": "job-4242-consumer", "ack_policy": "explicit", "ack_wait": 300.0,
            "max_deliver": 2, "deliver_policy": "all", "max_ack_pending": 1000,
            "filter_subject": "job.4242.tasks",
        })
        self.assertEqual(advisory_stream_config(), {
            "name": "advisories", "subjects": ["$JS.EVENT.ADVISORY.>"], "max_age": 3600.0,
        })
        self.assertEqual(dlq_consumer_config(4242), {
            "name": "job-4242-dlq", "durable_name": "job-4242-dlq",
            "filter_subject": "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.job_4242.job-4242-consumer",
        })

    def test_stamp_is_the_only_addition(self):
        for plain, stamped in ((task_stream_config(4242), task_stream_config(4242, 3)),
                               (task_consumer_config(4242), task_consumer_config(4242, 3)),
                               (dlq_consumer_config(4242), dlq_consumer_config(4242, 3))):
            with self.subTest(name=plain.get("name", plain.get("durable_name"))):
                self.assertEqual(stamped, {**plain, "metadata": {"job_attempt": "3"}})

    def test_overrides(self):
        cfg = task_consumer_config(7, ack_wait=30, max_deliver=5, max_ack_pending=10)
        self.assertEqual((cfg["ack_wait"], cfg["max_deliver"], cfg["max_ack_pending"]), (30.0, 5, 10))

    def test_refused(self):
        for job_id, attempt in ((0, 1), ("7", 1), (True, 1), (7, -1), (7, "3"), (7, True)):
            with self.subTest(job_id=job_id, attempt=attempt):
                with self.assertRaises(ValueError):
                    task_stream_config(job_id, attempt)
        with self.assertRaises(ValueError):
            attempt_metadata(None)
        for pattern in ("job", "job_{id}_{id}"):
            with self.subTest(pattern=pattern):
                with self.assertRaises(ValueError):
                    task_stream_config(7, 1, stream_pattern=pattern)


if __name__ == "__main__":
    unittest.main()
