"""The guide's flows with Antenna's own queue code (731cc2a2, unmodified).

Needs QJ_ANTENNA_REPO (tests/antenna.py) besides what tests/realnats.py
needs; skipped without it. Antenna's TaskQueueManager creates, fills, serves,
acknowledges and (for comparison) cleans the queues; this package does what
ANTENNA.md wires into Antenna; queue-janitor serve runs beside them.

- every Antenna name ANTENNA.md cites exists at 731cc2a2;
- B: the ERROR lines on Antenna's loggers (its module loggers and the job's
  logger, which the UI shows): Antenna's own cleanup after the service
  removed the queue first (the issue's measurement), and the guide's flows;
- D: a REVOKED of run 1 published only after the next Start created run 2;
- E: results of an earlier round, with the counter reset at the flush.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import os
import re
import unittest
from typing import Dict, List, Tuple

from . import antenna, realnats
from .realnats import ANTENNA_CONNECT, Answers, Job, job_events, raw_stream_info

HERE = os.path.dirname(os.path.abspath(__file__))
GUIDE = os.path.join(HERE, "..", "ANTENNA.md")


def setUpModule() -> None:  # noqa: N802 - unittest's name
    antenna.repo()
    realnats.setup()


class Names(unittest.TestCase):
    """Every Antenna name in ANTENNA.md's "Names cited" table is at 731cc2a2."""

    @staticmethod
    def table() -> List[Tuple[str, str]]:
        with open(GUIDE, encoding="utf-8") as f:
            text = f.read()
        section = text.split("## Names cited", 1)[1]
        rows = []
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 2 or not cells[1].startswith("`"):
                continue
            path = cells[1].strip("`")
            for name in re.findall(r"`([^`]+)`", cells[0]):
                rows.append((name, path))
        return rows

    @staticmethod
    def defined(tree: ast.AST, name: str) -> bool:
        parts = name.rstrip("()").split(".")
        scopes: List[ast.AST] = [tree]
        for part in parts:
            found = []
            for scope in scopes:
                for node in ast.iter_child_nodes(scope):
                    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == part:
                        found.append(node)
                    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                        if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                            found.append(node)
            if not found:
                return False
            scopes = found
        return True

    def test_every_name_exists(self):
        rows = self.table()
        self.assertGreater(len(rows), 40, "the table was found")
        sources: Dict[str, str] = {}
        for name, path in rows:
            with self.subTest(name=name, path=path):
                if path not in sources:
                    sources[path] = antenna.source(path)
                text = sources[path]
                if path.endswith(".py"):
                    ok = self.defined(ast.parse(text), name) or (name.isupper() and name in text)
                else:
                    ok = name in text
                self.assertTrue(ok, f"{name} not found in {path} at {antenna.ANTENNA_COMMIT[:8]}")


class Edits(unittest.TestCase):
    """The guide's diffs apply to Antenna's files at 731cc2a2, once each, and
    leave valid Python; there are three of them, plus one optional."""

    FILES = ["ami/jobs/models.py", "ami/ml/orchestration/jobs.py", "ami/jobs/tasks.py", "ami/jobs/apps.py"]

    @staticmethod
    def diffs() -> List[Tuple[str, str]]:
        with open(GUIDE, encoding="utf-8") as f:
            text = f.read()
        out = []
        for block in re.findall(r"```diff\n(.*?)```", text, re.S):
            old, new = [], []
            for line in block.splitlines():
                mark, body = (line[:1], line[1:]) if line else (" ", "")
                if mark in " -":
                    old.append(body)
                if mark in " +":
                    new.append(body)
            out.append(("\n".join(old) + "\n", "\n".join(new) + "\n"))
        return out

    def test_the_edits_apply_and_compile(self):
        diffs = self.diffs()
        self.assertEqual(len(diffs), 4, "edits 1 to 3 and the optional 4th")
        sources = {path: antenna.source(path) for path in self.FILES}
        edited = dict(sources)
        for n, (old, new) in enumerate(diffs, 1):
            with self.subTest(edit=n):
                where = [p for p in self.FILES if sources[p].count(old) == 1]
                self.assertEqual(len(where), 1, f"edit {n} matches exactly one place in one file:\n{old}")
                edited[where[0]] = edited[where[0]].replace(old, new)
        for path in self.FILES:
            with self.subTest(path=path):
                compile(edited[path], path, "exec")
                if path != "ami/jobs/apps.py":
                    self.assertIn("ami.jobs.queue_events import", edited[path])


class ErrorCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> List[str]:
        return [f"{r.name}: {r.getMessage()}" for r in self.records if r.levelno >= logging.ERROR]


class WithAntennasCode(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        antenna.task_queue_module("nats://127.0.0.1:4222")  # skips here, before any process starts
        cls.nats, cls.url = realnats.start_nats()
        try:
            cls.serve = realnats.start_serve(cls.url)
            cls.queue = antenna.task_queue_module(cls.url)
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
        self.count = ErrorCount()
        ami = logging.getLogger("ami")
        ami.addHandler(self.count)
        self.addCleanup(ami.removeHandler, self.count)
        ami.setLevel(logging.INFO)
        self.addCleanup(ami.setLevel, logging.NOTSET)

    async def asyncTearDown(self) -> None:
        await self.nc.close()

    def job_logger(self, pk: int) -> logging.Logger:
        return logging.getLogger(f"ami.jobs.{pk}")   # Job.logger's name

    def task(self, image: int):
        return antenna.PipelineProcessingTask(id=str(image), image_id=str(image), image_url=f"http://img/{image}.jpg")

    async def publish(self, pk: int, images) -> None:
        """queue_images_to_nats's publishing: ensure_job_resources, then publish_task per image."""
        async with self.queue.TaskQueueManager(job_logger=self.job_logger(pk)) as m:
            await m.ensure_job_resources(pk)
            for image in images:
                self.assertTrue(await m.publish_task(pk, self.task(image)))

    async def reserve(self, pk: int, count: int) -> list:
        """JobViewSet.tasks: reserve_tasks."""
        async with self.queue.TaskQueueManager() as m:
            return await m.reserve_tasks(pk, count=count, timeout=0.5)

    async def ack(self, tasks) -> None:
        """_ack_task_via_nats: acknowledge_task."""
        async with self.queue.TaskQueueManager() as m:
            for t in tasks:
                self.assertTrue(await m.acknowledge_task(t.reply_subject))

    async def test_b_antennas_cleanup_after_the_service_logs_errors(self):
        # The measurement: the service deleted first, then Antenna's
        # TaskQueueManager.cleanup_job_resources wrote ERROR lines into the job's log.
        events = job_events(self.url)
        in_job_logs = []
        for pk in range(3101, 3111):
            await self.publish(pk, range(3))
            await self.ack(await self.reserve(pk, 3))
            await asyncio.to_thread(events.changed, Job(pk, "SUCCESS"), previous_status="STARTED")
            (data,) = await self.answers.wait_for(f"job.queue.cleaned.{pk}")
            self.assertEqual(data["outcome"], "removed")
            async with self.queue.TaskQueueManager(job_logger=self.job_logger(pk)) as m:
                self.assertFalse(await m.cleanup_job_resources(pk))
            in_job_logs.append(len([e for e in self.count.errors() if e.startswith(f"ami.jobs.{pk}:")]))
        realnats.report(f"Antenna's own cleanup after the service, 10 SUCCESS completions: "
                        f"{len(self.count.errors())} ERROR lines on Antenna's loggers, {sum(in_job_logs)} of them in "
                        f"the jobs' logs ({in_job_logs[0]} per job)")
        self.assertEqual(in_job_logs, [2] * 10, self.count.errors()[:4])

    async def test_b_the_guides_flows_log_no_error(self):
        events = job_events(self.url)
        # Ten jobs: Start, Antenna's round, all tasks done, the queue's end where
        # Antenna tears it down (SUCCESS).
        for pk in range(3201, 3211):
            log = self.job_logger(pk)
            await asyncio.to_thread(job_events(self.url).restart, Job(pk, "PENDING", logger=log))
            await self.publish(pk, range(3))
            await self.ack(await self.reserve(pk, 3))
            self.assertTrue(await asyncio.to_thread(events.end_queue, pk, Job(pk, "SUCCESS"), job_logger=log))
            (data,) = await self.answers.wait_for(f"job.queue.cleaned.{pk}")
            self.assertEqual(data["outcome"], "nothing_to_remove", "Antenna cleaned first: one cleaner")
        # A cancel while tasks are in flight (REVOKED), a failure (FAILURE), and the
        # service first (its reconciler, or an event that raced): all quiet.
        pk = 3211
        await asyncio.to_thread(job_events(self.url).restart, Job(pk, "PENDING"))
        await self.publish(pk, range(5))
        await self.reserve(pk, 2)
        self.assertTrue(await asyncio.to_thread(events.end_queue, pk, Job(pk, "REVOKED"), job_logger=self.job_logger(pk)))
        pk = 3212
        await self.publish(pk, range(2))
        self.assertTrue(await asyncio.to_thread(events.end_queue, pk, Job(pk, "FAILURE"), job_logger=self.job_logger(pk)))
        pk = 3213
        await self.publish(pk, range(2))
        await asyncio.to_thread(events.changed, Job(pk, "SUCCESS"))
        await self.answers.wait_for(f"job.queue.cleaned.{pk}")
        self.assertTrue(await asyncio.to_thread(events.end_queue, pk, Job(pk, "SUCCESS"), job_logger=self.job_logger(pk)))
        # A Retry of a finished job: the leftover flushed, Antenna's new round.
        await asyncio.to_thread(job_events(self.url).restart, Job(pk, "SUCCESS", logger=self.job_logger(pk)))
        await self.publish(pk, range(100, 102))
        self.assertEqual(len(await self.reserve(pk, 10)), 2)
        realnats.report(f"the guide's flows with Antenna's queue code: {len(self.count.errors())} ERROR lines on "
                        f"Antenna's loggers ({len(self.count.records)} lines in all)")
        self.assertEqual(self.count.errors(), [])
        self.assertTrue(any("already removed" in r.getMessage() for r in self.count.records
                            if r.name == "ami.jobs.3213"), "the service-first case went through the quiet path")

    async def test_d_late_revoked_of_run_1_keeps_run_2(self):
        pk = 3301
        run1 = await asyncio.to_thread(job_events(self.url).restart, Job(pk, "PENDING"))
        await self.publish(pk, range(3))
        held = []
        late = job_events(self.url, on_commit=held.append)  # the REVOKED's publication, delayed
        await asyncio.to_thread(late.end_queue, pk, Job(pk, "REVOKED"), job_logger=self.job_logger(pk))
        run2 = await asyncio.to_thread(job_events(self.url).restart, Job(pk, "REVOKED"))
        await self.publish(pk, range(100, 104))            # Antenna reuses the stamped stream
        publication = held.pop()
        await asyncio.to_thread(publication)               # run 1's REVOKED reaches NATS now
        await realnats.settled(self.nc)
        info = await raw_stream_info(self.nc, f"job_{pk}")
        self.assertIsNotNone(info, "run 2 intact")
        self.assertEqual((info["state"]["messages"], info["config"]["metadata"]["job_attempt"]),
                         (4, str(run2["attempt"])))
        self.assertLess(run1["attempt"], run2["attempt"])
        tasks = await self.reserve(pk, 10)
        self.assertEqual(sorted(int(t.image_id) for t in tasks), [100, 101, 102, 103])
        rec = await realnats.record(self.nc, pk)
        self.assertEqual(rec["attempt"], run2["attempt"], "the late event was stale")

    async def test_e_results_of_an_earlier_round_do_not_count(self):
        pk = 3401
        events = job_events(self.url)
        counted = set()                                     # the round's processed images (Redis, in Antenna)

        async def result(task) -> None:                     # process_nats_pipeline_result, guide's first lines
            if await asyncio.to_thread(events.result_is_current, pk, task.reply_subject):
                counted.add(task.image_id)

        await self.publish(pk, range(5))
        in_flight = await self.reserve(pk, 3)               # pulled by workers before the Retry
        counted.clear()                                     # Job.retry's progress.reset()
        await result(in_flight[0])                          # lands between the reset and the flush: counted...
        self.assertEqual(counted, {in_flight[0].image_id})
        await asyncio.to_thread(events.restart, Job(pk, "RETRY"))
        counted.clear()                                     # ... but the guide resets at the flush
        await self.publish(pk, range(5))                    # the new round, same images
        for task in in_flight[1:]:                          # the old round's late results
            await result(task)
        self.assertEqual(counted, set(), "no result of the earlier round counts")
        new = await self.reserve(pk, 10)
        self.assertEqual(len(new), 5)
        for task in new:
            await result(task)
        self.assertEqual(sorted(counted), ["0", "1", "2", "3", "4"])


if __name__ == "__main__":
    unittest.main()
