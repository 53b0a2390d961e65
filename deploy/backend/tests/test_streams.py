import unittest

from job_status_events import (
    ATTEMPT_METADATA_KEY,
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
            "retention": "limits",
            "storage": "file",
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

    def test_consumers(self):
        self.assertEqual(task_consumer_config(4242, 3), {
            "durable_name": "job-4242-consumer", "ack_policy": "explicit", "ack_wait": 30.0, "max_deliver": 5,
            "metadata": {"job_attempt": "3"},
        })
        self.assertEqual(dlq_consumer_config(4242, 3), {
            "durable_name": "job-4242-dlq", "ack_policy": "explicit",
            "filter_subject": "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.job_4242.*",
            "metadata": {"job_attempt": "3"},
        })

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
