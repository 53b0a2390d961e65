"""What the end-to-end tests run: the real nats-py, a real nats-server, the real queue-janitor.

- nats-py: an installed one, else nats-io/nats.py v2.10.0 at
  ../shared/third_party/nats-py-2.10.0 beside the repository (the version
  Antenna pins).
- queue-janitor: QJ_BIN (a built binary), else built once with Go.
- NATS: QJ_NATS_SERVER_BIN, a nats-server binary started as
  ``nats-server -js -a 127.0.0.1 -p <port> -sd <tmpdir>`` (CI runs the tests
  once more with nats-server 2.10.27, the oldest the project supports), else
  ``queue-janitor dev-nats`` (the nats-server version in go.mod).
- Antenna's own code (optional): QJ_ANTENNA_REPO, a clone (or bare git
  directory) of RolnickLab/antenna holding commit 731cc2a2; the tests that
  need it are skipped without it.

Without nats-py, or without Go and QJ_BIN, the tests that need them are
skipped with a line saying what to get.
"""

from __future__ import annotations

import asyncio
import atexit
import json
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
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
SHARED_NATS_PY = os.path.normpath(os.path.join(REPO, "..", "shared", "third_party", "nats-py-2.10.0"))

ANTENNA_TZ = "America/New_York"                      # config/settings/base.py TIME_ZONE
ANTENNA_CONNECT = {"connect_timeout": 5, "allow_reconnect": False}  # nats_queue.get_connection
TERMINAL = "revoked,failure,success,deleted"


def _find_nats_py() -> Optional[str]:
    """Where nats-py comes from: an installed one wins, else ../shared."""
    try:
        import nats
        return os.path.dirname(nats.__file__)
    except ImportError:
        pass
    if os.path.isdir(os.path.join(SHARED_NATS_PY, "nats")):
        sys.path.insert(0, SHARED_NATS_PY)
        return SHARED_NATS_PY
    return None


NATS_PY = _find_nats_py()
HOW_TO_GET = ("pip install nats-py==2.10.0 (the version Antenna pins), or put nats-io/nats.py v2.10.0 at "
              + SHARED_NATS_PY)

_state: Dict[str, str] = {}


def _resolve(path: str) -> str:
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    return os.path.join(REPO, path)  # relative to the repository root, where make runs


def setup() -> None:
    """Once per process: nats-py found, queue-janitor built; raises SkipTest otherwise."""
    if NATS_PY is None:
        raise unittest.SkipTest("real nats-py not found: " + HOW_TO_GET)
    if "bin" in _state:
        return
    import logging

    # nats-py logs every refused connection attempt with a traceback; the
    # tests that provoke them check the outcome instead.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)
    import nats
    from nats.aio.client import __version__ as nats_py_version
    tmp = tempfile.mkdtemp(prefix="qj-real-nats-")
    atexit.register(shutil.rmtree, tmp, True)
    _state["tmp"] = tmp
    server = os.environ.get("QJ_NATS_SERVER_BIN")
    if server:
        server = _resolve(server)
        if not os.access(server, os.X_OK):
            raise RuntimeError(f"QJ_NATS_SERVER_BIN={server} is not an executable nats-server")
        _state["nats_server"] = server
    binary = os.environ.get("QJ_BIN")
    if binary:
        binary = _resolve(binary)
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"QJ_BIN={binary} is not an executable queue-janitor")
    else:
        go = shutil.which("go")
        if go is None:
            raise unittest.SkipTest("no Go toolchain to build queue-janitor: install Go, or set QJ_BIN to a built binary")
        binary = os.path.join(tmp, "queue-janitor")
        out = subprocess.run([go, "build", "-o", binary, "./cmd/queue-janitor"], cwd=REPO, capture_output=True,
                             text=True, timeout=1200)
        if out.returncode != 0:
            raise RuntimeError("go build ./cmd/queue-janitor failed:\n" + out.stderr)
    _state["bin"] = binary
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout.strip() if server \
        else "queue-janitor dev-nats (go.mod's nats-server)"
    sys.stderr.write(f"real NATS tests: nats-py {nats_py_version} from {os.path.dirname(nats.__file__)}; "
                     f"server: {version}\n")


def tmpdir() -> str:
    return tempfile.mkdtemp(dir=_state["tmp"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_running: List["Proc"] = []


@atexit.register
def _stop_leftovers() -> None:
    """Whatever a failed set-up left running is stopped when the tests end."""
    for proc in _running:
        if proc.p.poll() is None:
            proc.p.send_signal(signal.SIGCONT)
            proc.p.kill()
            proc.p.wait()


class Proc:
    """A subprocess, its output in a file shown on failure."""

    def __init__(self, name: str, argv: List[str]) -> None:
        self.log_path = os.path.join(_state["tmp"], f"{name}-{time.monotonic_ns()}.log")
        self.log = open(self.log_path, "wb")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        _running.append(self)

    def output(self, tail: int = 4000) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-tail:]

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGCONT)
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def qj(name: str, args: List[str]) -> Proc:
    return Proc(name, [_state["bin"], *args])


def start_nats() -> Tuple[Proc, str]:
    """A JetStream server on a free port: QJ_NATS_SERVER_BIN when set, else
    ``queue-janitor dev-nats``. Returns it and its URL."""
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    server = _state.get("nats_server")
    if server:
        proc = Proc("nats-server", [server, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", tmpdir()])
        ready = "Server is ready"
    else:
        proc = qj("dev-nats", ["dev-nats", "--listen", f"127.0.0.1:{port}", "--store-dir", tmpdir()])
        ready = "nats-url:"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError("the NATS server exited:\n" + proc.output())
        if ready in proc.output():
            return proc, url
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError("the NATS server did not start:\n" + proc.output())


def start_serve(nats_url: str, *extra: str) -> Proc:
    """queue-janitor serve on nats_url, waited on until /readyz answers 200."""
    http = f"127.0.0.1:{free_port()}"
    # --trust-new-bucket: each test's server starts empty, so no earlier bucket
    # can have held a claim, and the service need not wait a lease first.
    proc = qj("serve", ["serve", "--nats-url", nats_url, "--http-addr", http, "--terminal-statuses", TERMINAL,
                        "--log-format", "json", "--log-level", "info", "--trust-new-bucket", *extra])
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


# --- Antenna's queue, as TaskQueueManager creates it --------------------------

async def create_antenna_queue(js, job_id: int, tasks: int, *, start: int = 0) -> None:
    """Stream, consumer, shared advisory stream and dead-letter consumer with
    Antenna's settings and calls (ami/ml/orchestration/nats_queue.py at
    731cc2a2), then ``tasks`` task messages. An existing stream is reused, as
    TaskQueueManager._ensure_stream does."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    import nats.js.errors

    stream, subject, consumer = f"job_{job_id}", f"job.{job_id}.tasks", f"job-{job_id}-consumer"
    try:
        await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(name=stream, subjects=[subject], max_age=86400)
    try:
        await js.consumer_info(stream, consumer)
    except nats.js.errors.NotFoundError:
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
    for n in range(start, start + tasks):
        await js.publish(subject, json.dumps({"image_id": n}).encode())


async def exists(call) -> bool:
    import nats.js.errors
    try:
        await call
        return True
    except nats.js.errors.NotFoundError:
        return False


async def raw_stream_info(nc, name: str) -> Optional[dict]:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)
    doc = json.loads(msg.data)
    return None if doc.get("error") else doc


async def record(nc, job_id: int, bucket: str = "queue_janitor_jobs") -> Optional[dict]:
    """The service's record of a job, as stored."""
    import base64
    msg = await nc.request(f"$JS.API.STREAM.MSG.GET.KV_{bucket}",
                           json.dumps({"last_by_subj": f"$KV.{bucket}.job.{job_id}"}).encode(), timeout=5)
    doc = json.loads(msg.data)
    if doc.get("error"):
        return None
    return json.loads(base64.b64decode(doc["message"]["data"]) or b"null")


async def last_event(nc, subject: str, stream: str = "JOB_EVENTS") -> Optional[dict]:
    """The last event stored on ``subject``, decoded (structured mode)."""
    import base64
    msg = await nc.request(f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"last_by_subj": subject}).encode(),
                           timeout=5)
    doc = json.loads(msg.data)
    if doc.get("error"):
        return None
    return json.loads(base64.b64decode(doc["message"]["data"]))


class Worker:
    """Pulls a job's tasks through Antenna's durable consumer and acks them,
    counting deliveries per task."""

    def __init__(self, js, job_id: int) -> None:
        self.js, self.job_id = js, job_id
        self.deliveries: Dict[int, int] = {}

    async def drain(self, timeout: float = 1.0) -> int:
        import nats.errors
        import nats.js.errors
        try:
            sub = await self.js.pull_subscribe(f"job.{self.job_id}.tasks", durable=f"job-{self.job_id}-consumer",
                                               stream=f"job_{self.job_id}")
        except nats.js.errors.NotFoundError:
            return 0
        got = 0
        try:
            while True:
                try:
                    msgs = await sub.fetch(100, timeout=timeout)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    return got
                for m in msgs:
                    n = json.loads(m.data)["image_id"]
                    self.deliveries[n] = self.deliveries.get(n, 0) + 1
                    await m.ack()
                    got += 1
        finally:
            await sub.unsubscribe()


class Answers:
    """Core-NATS subscription recording answers and task publishes in order."""

    def __init__(self) -> None:
        self.seen: List[tuple] = []
        self.changed = asyncio.Event()

    async def on(self, msg) -> None:
        body = json.loads(msg.data) if msg.subject.startswith("job.queue.") else None
        self.seen.append((msg.subject, body))
        self.changed.set()

    def of(self, subject: str) -> List[Dict]:
        return [b["data"] for s, b in self.seen if s == subject]

    async def wait_for(self, subject: str, n: int = 1, timeout: float = 30) -> List[Dict]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got = self.of(subject)
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


def antenna_now():
    """Antenna's clock: a naive local time (datetime.datetime.now() under
    TIME_ZONE = America/New_York), whatever this machine's zone is."""
    import datetime as dt
    from zoneinfo import ZoneInfo
    return dt.datetime.now(ZoneInfo(ANTENNA_TZ)).replace(tzinfo=None)


class Job:
    """Antenna's Job as JobEvents reads it: pk, status, dispatch_mode; no attempt."""

    def __init__(self, pk: int, status: str, attempt: Optional[int] = None, logger=None) -> None:
        self.pk, self.status, self.dispatch_mode = pk, status, "async_api"
        if attempt is not None:
            self.attempt = attempt
        if logger is not None:
            self.logger = logger


def job_events(url: str, **kw):
    """JobEvents as the Antenna guide configures it."""
    from job_status_events import EventConfig, JobEvents
    conf = EventConfig(source="/antenna", naive_time_zone=ANTENNA_TZ,
                       terminal_statuses=frozenset(TERMINAL.split(",")))
    kw.setdefault("on_commit", lambda fn: fn())      # outside a transaction Django runs it at once
    return JobEvents(url, config=conf, connect_options=dict(ANTENNA_CONNECT), now=antenna_now, **kw)


async def settled(nc, timeout: float = 30) -> None:
    """Wait until the service has handled every event in JOB_EVENTS."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await nc.request("$JS.API.CONSUMER.INFO.JOB_EVENTS.queue-janitor", b"", timeout=5)
        doc = json.loads(msg.data)
        if not doc.get("error") and doc.get("num_pending") == 0 and doc.get("num_ack_pending") == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the service did not settle: {doc}")
        await asyncio.sleep(0.1)


def report(line: str) -> None:
    """A measured figure, printed with the test output (never asserted)."""
    sys.stderr.write(f"\n  measured: {line}\n")
