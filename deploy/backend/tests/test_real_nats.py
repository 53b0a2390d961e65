"""End to end: the real nats-py, a real nats-server, the real queue-janitor.

The job queues are created as Antenna creates them (commit 731cc2a2,
ami/ml/orchestration/nats_queue.py: TaskQueueManager._ensure_stream,
TaskQueueManager._ensure_consumer, TaskQueueManager._setup_advisory_stream and
the pull_subscribe of TaskQueueManager.get_dead_letter_image_ids), the events
are published by this package with Antenna's connection options
(connect_timeout=5, allow_reconnect=False) and Antenna's naive local times, and
the service is `queue-janitor serve` on that server. What is needed, and the
QJ_NATS_SERVER_BIN switch to another nats-server: tests/realnats.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unittest

from . import realnats
from .realnats import ANTENNA_CONNECT, Answers, Job, create_antenna_queue, exists, job_events, raw_stream_info


def setUpModule() -> None:  # noqa: N802 - unittest's name
    realnats.setup()


class WithService(unittest.IsolatedAsyncioTestCase):
    serve: realnats.Proc
    nats: realnats.Proc
    url: str

    @classmethod
    def setUpClass(cls) -> None:
        cls.nats, cls.url = realnats.start_nats()
        try:
            cls.serve = realnats.start_serve(cls.url)
        except BaseException:
            cls.nats.stop()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.serve.stop()
        cls.nats.stop()

    async def asyncSetUp(self) -> None:
        import nats
        self.nc = await nats.connect(self.url, **ANTENNA_CONNECT)
        self.js = self.nc.jetstream()
        self.answers = Answers()
        await self.nc.subscribe("job.queue.>", cb=self.answers.on)
        await self.nc.flush()

    async def asyncTearDown(self) -> None:
        await self.nc.close()

    def fail_with_log(self, exc: BaseException) -> None:
        raise AssertionError(f"{exc}\n--- queue-janitor serve ---\n{self.serve.output()}") from exc

    async def test_terminal_statuses_clean_antennas_queue(self):
        # Each terminal status Antenna writes, and the job deletion; naive New York times.
        jobs = {"REVOKED": 1101, "FAILURE": 1102, "SUCCESS": 1103, "deleted": 1104}
        for status, pk in jobs.items():
            await create_antenna_queue(self.js, pk, tasks=5)
        events = job_events(self.url)
        for status, pk in jobs.items():
            job = Job(pk, "STARTED" if status == "deleted" else status)
            msg = await asyncio.to_thread(events.deleted, job, actor="superuser") if status == "deleted" \
                else await asyncio.to_thread(events.changed, job, previous_status="STARTED")
            self.assertIsNotNone(msg)
        try:
            for status, pk in jobs.items():
                (data,) = await self.answers.wait_for(f"job.queue.cleaned.{pk}")
                with self.subTest(status=status):
                    self.assertEqual(data["outcome"], "removed", data)
                    self.assertEqual(data["messages_discarded"], 5)
                    self.assertIn(f"stream job_{pk}", data["deleted"])
                    self.assertIn(f"consumer advisories/job-{pk}-dlq", data["deleted"])
                    self.assertFalse(await exists(self.js.stream_info(f"job_{pk}")))
                    self.assertFalse(await exists(self.js.consumer_info("advisories", f"job-{pk}-dlq")))
        except AssertionError as exc:
            self.fail_with_log(exc)
        self.assertTrue(await exists(self.js.stream_info("advisories")), "the shared advisory stream is kept")

    async def test_restart_flushed_before_the_new_round(self):
        # A leftover queue (Antenna: a REVOKED job's queue its own cleanup missed),
        # two tasks handed to a worker and never acked; then a Retry.
        pk = 1201
        await create_antenna_queue(self.js, pk, tasks=7)
        worker = await self.js.pull_subscribe(f"job.{pk}.tasks", durable=f"job-{pk}-consumer", stream=f"job_{pk}")
        self.assertEqual(len(await worker.fetch(2, timeout=5)), 2)
        await self.nc.subscribe(f"job.{pk}.tasks", cb=self.answers.on)   # sees the new round's publishes
        await self.nc.flush()

        events = job_events(self.url)
        try:
            done = await asyncio.to_thread(events.restart, Job(pk, "PENDING"), actor="user@example.org")
        except Exception as exc:
            self.fail_with_log(exc)
        # The new round, as MLJob.run would publish it once the handshake returned.
        await create_antenna_queue(self.js, pk, tasks=4)

        self.assertEqual((done["path"], done["outcome"]), ("service", "removed"), done)
        self.assertEqual(done["messages_discarded"], 7)
        self.assertEqual(done["answer"]["attempt"], done["attempt"], "the request carried the run number")
        order = [s for s, _ in self.answers.seen if s in (f"job.queue.flushed.{pk}", f"job.{pk}.tasks")]
        self.assertEqual(order, [f"job.queue.flushed.{pk}"] + [f"job.{pk}.tasks"] * 4)
        info = await self.js.stream_info(f"job_{pk}")
        self.assertEqual(info.state.messages, 4, "exactly the new round, no leftover")
        self.assertEqual(info.config.metadata["job_attempt"], str(done["attempt"]), "reused, as stamped")
        self.assertEqual(info.config.max_age, 86400.0)
        self.assertEqual((await self.js.consumer_info(f"job_{pk}", f"job-{pk}-consumer")).num_pending, 4)

    async def test_run_numbers_grow_from_the_server_clock(self):
        pk = 1251
        events = job_events(self.url)
        first = await asyncio.to_thread(events.restart, Job(pk, "PENDING"))
        second = await asyncio.to_thread(events.restart, Job(pk, "FAILURE"))
        self.assertGreater(second["attempt"], first["attempt"])
        self.assertGreater(first["attempt"], 10**12, "milliseconds of the server's clock")
        self.assertEqual(first["outcome"], "nothing_to_remove")
        self.assertEqual((second["outcome"], second["deleted"]), ("removed", [f"stream job_{pk}"]),
                         "the second Start flushes the first run's (empty) stream, stamped with a lower number")

    async def test_restart_with_the_backends_own_attempt(self):
        # A backend with its own run counter keeps it: the stamp is its number.
        from job_status_events.nats_adapter import provision_task_queue
        pk = 1301
        await provision_task_queue(self.js, pk, 1)
        await self.js.publish(f"job.{pk}.tasks", b"{}")
        events = job_events(self.url)
        try:
            done = await asyncio.to_thread(events.restart, Job(pk, "FAILURE", attempt=2))
        except Exception as exc:
            self.fail_with_log(exc)
        self.assertEqual((done["outcome"], done["attempt"], done["stream_created"]), ("removed", 2, True), done)
        await provision_task_queue(self.js, pk, 2)   # the backend's own creation finds the same stream
        self.assertEqual((await self.js.stream_info(f"job_{pk}")).config.metadata["job_attempt"], "2")

    async def test_end_queue_tears_down_then_announces_with_the_run(self):
        # The guide's cleanup: Antenna's teardown, "not found" as success, then
        # the terminal event with the run number read from the stream's stamp.
        pk = 1351
        events = job_events(self.url)
        done = await asyncio.to_thread(events.restart, Job(pk, "PENDING"))
        await create_antenna_queue(self.js, pk, tasks=3)
        gone = await asyncio.to_thread(events.end_queue, pk, Job(pk, "SUCCESS"))
        self.assertTrue(gone)
        self.assertFalse(await exists(self.js.stream_info(f"job_{pk}")))
        self.assertFalse(await exists(self.js.consumer_info("advisories", f"job-{pk}-dlq")))
        (data,) = await self.answers.wait_for(f"job.queue.cleaned.{pk}")
        self.assertEqual((data["outcome"], data["attempt"], data["status"]),
                         ("nothing_to_remove", done["attempt"], "success"), "one cleaner: Antenna, first")
        # A terminal event announced without the teardown reads the run from the stamp too.
        again = await asyncio.to_thread(events.restart, Job(pk, "SUCCESS"))
        await asyncio.to_thread(events.changed, Job(pk, "FAILURE"))
        (_, data) = await self.answers.wait_for(f"job.queue.cleaned.{pk}", 2)
        self.assertEqual((data["outcome"], data["attempt"]), ("removed", again["attempt"]))
        # The same teardown when queue-janitor was first: still success.
        await create_antenna_queue(self.js, pk, tasks=1)
        await asyncio.to_thread(events.changed, Job(pk, "REVOKED"))
        await self.answers.wait_for(f"job.queue.cleaned.{pk}", 3)
        with self.assertLogs("job_status_events", "INFO") as logs:   # (assertNoLogs needs Python 3.10)
            self.assertTrue(await asyncio.to_thread(events.end_queue, pk, Job(pk, "REVOKED")))
        self.assertEqual([r.levelname for r in logs.records if r.levelno >= logging.WARNING], [])
        self.assertTrue(any("already removed" in r.getMessage() for r in logs.records), logs.output)

    async def test_late_revoked_of_an_earlier_run_is_stale(self):
        # Run 1's REVOKED is built at the cancel (with run 1's number, read from
        # its stream) but reaches NATS only after the next Start created run 2.
        pk = 1401
        pending = []
        events = job_events(self.url, on_commit=pending.append)   # held: a publish delayed past the next Start
        run1 = await asyncio.to_thread(events.restart, Job(pk, "PENDING"))
        await create_antenna_queue(self.js, pk, tasks=3)
        await asyncio.to_thread(events.end_queue, pk, Job(pk, "REVOKED"))
        self.assertEqual(len(pending), 1)
        run2 = await asyncio.to_thread(job_events(self.url).restart, Job(pk, "REVOKED"))
        await create_antenna_queue(self.js, pk, tasks=4, start=100)
        late_publication = pending.pop()
        await asyncio.to_thread(late_publication)
        await realnats.settled(self.nc)
        info = await raw_stream_info(self.nc, f"job_{pk}")
        self.assertIsNotNone(info, "run 2's stream survives the late REVOKED of run 1")
        self.assertEqual(info["state"]["messages"], 4)
        self.assertEqual(info["config"]["metadata"]["job_attempt"], str(run2["attempt"]))
        self.assertLess(run1["attempt"], run2["attempt"])
        self.assertTrue(await exists(self.js.consumer_info(f"job_{pk}", f"job-{pk}-consumer")))
        # The same late event without a run number removes run 2: the time-only
        # fence cannot tell (why the terminal announcements carry the stamp).
        from job_status_events import build_status_event, EventConfig
        late = build_status_event(pk, "REVOKED", time=realnats.antenna_now(), config=EventConfig(
            naive_time_zone=realnats.ANTENNA_TZ, terminal_statuses=frozenset(realnats.TERMINAL.split(","))))
        await self.js.publish(late.subject, late.body, headers=late.headers)
        await realnats.settled(self.nc)
        self.assertIsNone(await raw_stream_info(self.nc, f"job_{pk}"))

    async def test_a_result_of_an_earlier_round_is_not_counted(self):
        pk = 1451
        events = job_events(self.url)
        await create_antenna_queue(self.js, pk, tasks=3)
        worker = await self.js.pull_subscribe(f"job.{pk}.tasks", durable=f"job-{pk}-consumer", stream=f"job_{pk}")
        old = await worker.fetch(2, timeout=5)          # handed out before the Start
        await worker.unsubscribe()
        before = await asyncio.to_thread(events.result_is_current, pk, old[0].reply)
        await asyncio.to_thread(events.restart, Job(pk, "FAILURE"))
        await create_antenna_queue(self.js, pk, tasks=2, start=100)
        worker = await self.js.pull_subscribe(f"job.{pk}.tasks", durable=f"job-{pk}-consumer", stream=f"job_{pk}")
        new = await worker.fetch(2, timeout=5)
        self.assertTrue(before, "current until the flush")
        with self.assertLogs("job_status_events", "INFO") as logs:
            self.assertFalse(await asyncio.to_thread(events.result_is_current, pk, old[1].reply))
        self.assertIn("earlier round", logs.output[0])
        self.assertEqual([await asyncio.to_thread(events.result_is_current, pk, m.reply) for m in new], [True, True])
        self.assertTrue(await asyncio.to_thread(events.result_is_current, pk, "not-an-ack-subject"))


class WithoutNATS(unittest.TestCase):
    def test_nats_unreachable_is_a_flush_error(self):
        from job_status_events import FlushError
        # Antenna's options; JobEvents adds max_reconnect_attempts=1, without
        # which nats-py 2.10.0 retries a refused first connection for 2 minutes.
        events = job_events(f"nats://127.0.0.1:{realnats.free_port()}")
        started = time.monotonic()
        with self.assertRaises(FlushError) as caught:
            events.restart(Job(1601, "PENDING"))
        realnats.report(f"NATS unreachable: FlushError after {time.monotonic() - started:.1f}s")
        self.assertIn("cannot connect to NATS", str(caught.exception))
        # A status event is logged, never raised, when NATS is away.
        with self.assertLogs("job_status_events", "ERROR"):
            events.changed(Job(1601, "REVOKED"))
        # The teardown says what it could not do, as a warning, and returns False.
        with self.assertLogs("job_status_events", "WARNING"):
            self.assertFalse(events.end_queue(1601, Job(1601, "REVOKED")))
        self.assertTrue(events.result_is_current(1601, "$JS.ACK.job_1601.job-1601-consumer.1.2.2.1700000000000000000.0"))


if __name__ == "__main__":
    unittest.main()
