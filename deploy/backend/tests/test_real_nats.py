"""End to end: the real nats-py, a real nats-server, the real queue-janitor.

The job queues are created as Antenna creates them (commit 731cc2a2,
ami/ml/orchestration/nats_queue.py: TaskQueueManager._ensure_stream,
TaskQueueManager._ensure_consumer, TaskQueueManager._setup_advisory_stream and
the pull_subscribe of TaskQueueManager.get_dead_letter_image_ids), the events
are published by this package with Antenna's connection options
(connect_timeout=5, allow_reconnect=False) and Antenna's naive local times, and
the service is `queue-janitor serve --embedded-nats` (or, for "the service is
down", `queue-janitor dev-nats` alone).

Needs nats-py (installed, or nats-io/nats.py v2.10.0 at
../shared/third_party/nats-py-2.10.0 beside the repository) and either Go (the
binary is built once) or QJ_BIN pointing at a built queue-janitor. Without
them every test here is skipped with a line saying what to get.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
SHARED_NATS_PY = os.path.normpath(os.path.join(REPO, "..", "shared", "third_party", "nats-py-2.10.0"))


def _find_nats_py() -> Optional[str]:
    """Where nats-py comes from: an installed one wins, else ../shared."""
    try:
        import nats  # noqa: F401
        return "installed"
    except ImportError:
        pass
    if os.path.isdir(os.path.join(SHARED_NATS_PY, "nats")):
        sys.path.insert(0, SHARED_NATS_PY)
        return SHARED_NATS_PY
    return None


NATS_PY = _find_nats_py()
HOW_TO_GET = ("pip install nats-py==2.10.0 (the version Antenna pins), or put nats-io/nats.py v2.10.0 at "
              + SHARED_NATS_PY)

ANTENNA_TZ = "America/New_York"                      # config/settings/base.py TIME_ZONE
ANTENNA_CONNECT = {"connect_timeout": 5, "allow_reconnect": False}  # nats_queue.get_connection
TERMINAL = "revoked,failure,success,deleted"

_tmp: Optional[str] = None
_bin: Optional[str] = None


def setUpModule() -> None:  # noqa: N802 - unittest's name
    global _tmp, _bin
    if NATS_PY is None:
        raise unittest.SkipTest("real nats-py not found: " + HOW_TO_GET)
    # nats-py logs every refused connection attempt with a traceback; the
    # tests that provoke them check the outcome instead.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)
    import nats
    from nats.aio.client import __version__ as nats_py_version
    sys.stderr.write(f"test_real_nats: nats-py {nats_py_version} from {os.path.dirname(nats.__file__)}\n")
    _tmp = tempfile.mkdtemp(prefix="qj-real-nats-")
    _bin = os.environ.get("QJ_BIN")
    if _bin:
        if not os.access(_bin, os.X_OK):
            raise RuntimeError(f"QJ_BIN={_bin} is not an executable queue-janitor")
        return
    go = shutil.which("go")
    if go is None:
        raise unittest.SkipTest("no Go toolchain to build queue-janitor: install Go, or set QJ_BIN to a built binary")
    _bin = os.path.join(_tmp, "queue-janitor")
    out = subprocess.run([go, "build", "-o", _bin, "./cmd/queue-janitor"], cwd=REPO, capture_output=True,
                         text=True, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError("go build ./cmd/queue-janitor failed:\n" + out.stderr)


def tearDownModule() -> None:  # noqa: N802
    if _tmp:
        shutil.rmtree(_tmp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A queue-janitor subprocess, its output in a file shown on failure."""

    def __init__(self, name: str, args: List[str]) -> None:
        assert _bin and _tmp
        self.log_path = os.path.join(_tmp, f"{name}-{time.monotonic_ns()}.log")
        self.log = open(self.log_path, "wb")
        self.p = subprocess.Popen([_bin, *args], stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def start_serve(nats_args: List[str]) -> Proc:
    """queue-janitor serve, waited on until /readyz answers 200."""
    http = f"127.0.0.1:{free_port()}"
    proc = Proc("serve", ["serve", *nats_args, "--http-addr", http, "--terminal-statuses", TERMINAL,
                          "--log-format", "json", "--log-level", "info"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError("queue-janitor serve exited:\n" + proc.output())
        try:
            with urllib.request.urlopen(f"http://{http}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError("queue-janitor serve not ready in 60s:\n" + proc.output())


def start_dev_nats() -> (Proc, str):
    url = f"127.0.0.1:{free_port()}"
    proc = Proc("dev-nats", ["dev-nats", "--listen", url, "--store-dir", tempfile.mkdtemp(dir=_tmp)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError("queue-janitor dev-nats exited:\n" + proc.output())
        if "nats-url:" in proc.output():
            return proc, "nats://" + url
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError("queue-janitor dev-nats did not start:\n" + proc.output())


# --- Antenna's queue, as TaskQueueManager creates it --------------------------

async def create_antenna_queue(js, job_id: int, tasks: int) -> None:
    """Stream, consumer, shared advisory stream and dead-letter consumer with
    Antenna's settings and calls, then `tasks` task messages."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    import nats.js.errors

    stream, subject, consumer = f"job_{job_id}", f"job.{job_id}.tasks", f"job-{job_id}-consumer"
    await js.add_stream(name=stream, subjects=[subject], max_age=86400)
    await js.add_consumer(stream=stream, config=ConsumerConfig(
        durable_name=consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=300, max_deliver=2,
        deliver_policy=DeliverPolicy.ALL, max_ack_pending=1000, filter_subject=subject))
    try:
        await js.stream_info("advisories")
    except nats.js.errors.NotFoundError:
        await js.add_stream(name="advisories", subjects=["$JS.EVENT.ADVISORY.>"], max_age=3600)
    psub = await js.pull_subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}",
                                   durable=f"job-{job_id}-dlq", stream="advisories")
    await psub.unsubscribe()
    for n in range(tasks):
        await js.publish(subject, json.dumps({"image_id": n}).encode())


async def exists(call) -> bool:
    import nats.js.errors
    try:
        await call
        return True
    except nats.js.errors.NotFoundError:
        return False


def antenna_now() -> dt.datetime:
    """Antenna's clock: a naive local time (datetime.datetime.now() under
    TIME_ZONE = America/New_York), whatever this machine's zone is."""
    from zoneinfo import ZoneInfo
    return dt.datetime.now(ZoneInfo(ANTENNA_TZ)).replace(tzinfo=None)


class Job:
    """Antenna's Job as JobEvents reads it: pk, status, dispatch_mode; no attempt."""

    def __init__(self, pk: int, status: str, attempt: Optional[int] = None) -> None:
        self.pk, self.status, self.dispatch_mode = pk, status, "async_api"
        if attempt is not None:
            self.attempt = attempt


def job_events(url: str, **kw):
    from job_status_events import EventConfig, JobEvents
    conf = EventConfig(source="/antenna", naive_time_zone=ANTENNA_TZ,
                       terminal_statuses=frozenset(TERMINAL.split(",")))
    kw.setdefault("restart_timeout", 10)
    kw.setdefault("restart_tries", 2)
    return JobEvents(url, config=conf, connect_options=dict(ANTENNA_CONNECT),
                     on_commit=lambda fn: fn(),      # outside a transaction Django runs it at once
                     now=antenna_now, **kw)


class Answers:
    """Core-NATS subscription recording answers and task publishes in order."""

    def __init__(self) -> None:
        self.seen: List[tuple] = []
        self.changed = asyncio.Event()

    async def on(self, msg) -> None:
        body = json.loads(msg.data) if msg.subject.startswith("job.queue.") else None
        self.seen.append((msg.subject, body))
        self.changed.set()

    async def wait_for(self, subject: str, n: int = 1, timeout: float = 30) -> List[Dict]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got = [b["data"] for s, b in self.seen if s == subject]
            if len(got) >= n:
                return got
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no {n} answer(s) on {subject} in {timeout}s; seen {[s for s, _ in self.seen]}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass


# The service judges a stream without an attempt stamp by its creation time
# against the event's arrival at NATS, both in server time: a queue created
# just before the event is removed, so no settling pause is needed.
SETTLE = 0


class WithService(unittest.IsolatedAsyncioTestCase):
    serve: Proc
    url: str

    @classmethod
    def setUpClass(cls) -> None:
        port = free_port()
        cls.url = f"nats://127.0.0.1:{port}"
        cls.serve = start_serve(["--embedded-nats", "--embedded-listen", f"127.0.0.1:{port}"])

    @classmethod
    def tearDownClass(cls) -> None:
        cls.serve.stop()

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
        await asyncio.sleep(SETTLE)
        events = job_events(self.url)
        for status, pk in jobs.items():
            job = Job(pk, "STARTED" if status == "deleted" else status)
            msg = (events.deleted(job, actor="superuser") if status == "deleted"
                   else events.changed(job, previous_status="STARTED"))
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
        # two tasks handed to a worker and never acked; then a Retry without attempts.
        pk = 1201
        await create_antenna_queue(self.js, pk, tasks=7)
        worker = await self.js.pull_subscribe(f"job.{pk}.tasks", durable=f"job-{pk}-consumer", stream=f"job_{pk}")
        self.assertEqual(len(await worker.fetch(2, timeout=5)), 2)
        await self.nc.subscribe(f"job.{pk}.tasks", cb=self.answers.on)   # sees the new round's publishes
        await self.nc.flush()
        await asyncio.sleep(SETTLE)

        events = job_events(self.url)
        try:
            flushed = await asyncio.to_thread(events.restart, Job(pk, "PENDING"), actor="user@example.org")
        except Exception as exc:
            self.fail_with_log(exc)
        # The new round, as MLJob.run would publish it once the handshake returned.
        await create_antenna_queue(self.js, pk, tasks=4)

        self.assertEqual(flushed["outcome"], "removed", flushed)
        self.assertEqual(flushed["messages_discarded"], 7)
        self.assertNotIn("attempt", flushed)
        order = [s for s, _ in self.answers.seen if s in (f"job.queue.flushed.{pk}", f"job.{pk}.tasks")]
        self.assertEqual(order, [f"job.queue.flushed.{pk}"] + [f"job.{pk}.tasks"] * 4)
        info = await self.js.stream_info(f"job_{pk}")
        self.assertEqual(info.state.messages, 4, "exactly the new round, no leftover")
        self.assertEqual((await self.js.consumer_info(f"job_{pk}", f"job-{pk}-consumer")).num_pending, 4)

    async def test_restart_with_attempt_and_stamped_queue(self):
        # What Job.attempt would buy: the package's provisioning (Antenna's
        # settings plus the stamp) and an exact fence; no settle time needed.
        from job_status_events.nats_adapter import provision_task_queue
        pk = 1301
        await provision_task_queue(self.js, pk, 1)
        cfg = (await self.js.consumer_info(f"job_{pk}", f"job-{pk}-consumer")).config
        self.assertEqual((cfg.ack_wait, cfg.max_deliver, cfg.max_ack_pending, cfg.filter_subject),
                         (300.0, 2, 1000, f"job.{pk}.tasks"))
        self.assertEqual((await self.js.stream_info(f"job_{pk}")).config.max_age, 86400.0)
        self.assertEqual((await self.js.stream_info("advisories")).config.subjects, ["$JS.EVENT.ADVISORY.>"])
        await self.js.publish(f"job.{pk}.tasks", b"{}")
        events = job_events(self.url)
        try:
            flushed = await asyncio.to_thread(events.restart, Job(pk, "FAILURE", attempt=2))
        except Exception as exc:
            self.fail_with_log(exc)
        self.assertEqual((flushed["outcome"], flushed["attempt"]), ("removed", 2), flushed)
        await provision_task_queue(self.js, pk, 2)
        again = await asyncio.to_thread(events.restart, Job(pk, "FAILURE", attempt=2))
        self.assertEqual(again["outcome"], "already_done", again)
        self.assertTrue(await exists(self.js.stream_info(f"job_{pk}")), "a repeated request deletes nothing")


class WithoutService(unittest.IsolatedAsyncioTestCase):
    """NATS runs, queue-janitor does not."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.nats, cls.url = start_dev_nats()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.nats.stop()

    async def test_handshake_times_out_then_the_service_catches_up(self):
        import nats
        from job_status_events import FlushTimeout
        pk = 1401
        nc = await nats.connect(self.url, **ANTENNA_CONNECT)
        js = nc.jetstream()
        try:
            # The event stream as the README says to create it when the backend may start first.
            await js.add_stream(name="JOB_EVENTS", subjects=["job.status.*"], max_age=168 * 3600,
                                duplicate_window=120)
            await create_antenna_queue(js, pk, tasks=3)
            await asyncio.sleep(SETTLE)
            events = job_events(self.url, restart_timeout=0.5, restart_tries=2)
            started = time.monotonic()
            with self.assertRaises(FlushTimeout) as caught:
                await asyncio.to_thread(events.restart, Job(pk, "PENDING"))
            waited = time.monotonic() - started
            self.assertGreaterEqual(waited, 1.0)
            self.assertLess(waited, 10)
            self.assertEqual(len(caught.exception.event_ids), 2)
            self.assertIn("do not publish the new round", str(caught.exception))
            self.assertTrue(await exists(js.stream_info(f"job_{pk}")), "nothing flushed while the service is down")
            self.assertEqual((await js.stream_info("JOB_EVENTS")).state.messages, 2, "the requests wait in the stream")

            # The service comes back: it reads the waiting requests and flushes then.
            serve = await asyncio.to_thread(start_serve, ["--nats-url", self.url])
            try:
                deadline = time.monotonic() + 30
                while await exists(js.stream_info(f"job_{pk}")):
                    if time.monotonic() > deadline:
                        raise AssertionError("leftover not flushed after the service came back:\n" + serve.output())
                    await asyncio.sleep(0.1)
            finally:
                serve.stop()
        finally:
            await nc.close()

    async def test_no_event_stream_is_a_flush_error(self):
        # A NATS where the service never ran: no JOB_EVENTS, the publish has no responder.
        from job_status_events import FlushError, FlushTimeout
        other, url = await asyncio.to_thread(start_dev_nats)
        try:
            events = job_events(url)
            with self.assertRaises(FlushError) as caught:
                await asyncio.to_thread(events.restart, Job(1501, "PENDING"))
            self.assertNotIsInstance(caught.exception, FlushTimeout)
            self.assertIn("could not publish restart_requested", str(caught.exception))
        finally:
            other.stop()

    async def test_nats_unreachable_is_a_flush_error(self):
        from job_status_events import FlushError
        # Antenna's options; JobEvents adds max_reconnect_attempts=1, without
        # which nats-py 2.10.0 retries a refused first connection for 2 minutes.
        events = job_events(f"nats://127.0.0.1:{free_port()}")
        started = time.monotonic()
        with self.assertRaises(FlushError) as caught:
            await asyncio.to_thread(events.restart, Job(1601, "PENDING"))
        self.assertIn("cannot connect to NATS", str(caught.exception))
        # A status event is logged, never raised, when NATS is away.
        with self.assertLogs("job_status_events", "ERROR"):
            await asyncio.to_thread(events.changed, Job(1601, "REVOKED"))
        self.assertLess(time.monotonic() - started, 30)


if __name__ == "__main__":
    unittest.main()
