"""A Start never fails or stalls because of queue-janitor: end to end.

Three ways the service can fail a Start, each with the real nats-py, a real
nats-server and the real `queue-janitor serve`:

(a) the service is stopped: the request waits in JOB_EVENTS, no answer comes;
(b) the service is frozen while it holds the job's lease, mid-flush: a proxy
    between it and NATS holds its first delete of the job's queue (so nothing
    of it reaches the server), and the test then sends it SIGSTOP; the
    service's claim is in the record, its deletes are not done;
(c) there is no event stream (a NATS the service never ran on): the request
    cannot be published.

In each, Start flushes the leftovers itself and stamps the new run; the new
round is published as Antenna publishes it; a worker drains it through
Antenna's consumer and every task is delivered exactly once, none of the
leftover; no job fails. When the service runs again, it handles the waiting
request without touching the new run (answer ``already_done``), and its
reconciler keeps the new run's stream. The time each Start waited is printed
("measured: ..."), not asserted.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import unittest
from typing import List, Optional

from . import realnats
from .realnats import ANTENNA_CONNECT, Answers, Job, Worker, create_antenna_queue, job_events, raw_stream_info


def setUpModule() -> None:  # noqa: N802 - unittest's name
    realnats.setup()


#: The reconciler as fast as the service allows, so that passes run within the test
#: (a stopped replica's sweeper lease lapses in 2 s); debug logs show every pass.
FAST_RECONCILE = ["--reconcile-interval", "1s", "--reconcile-grace", "1s", "--reconcile-lease", "2s",
                  "--log-level", "debug"]
LEASE_S = 12.0


class HoldingProxy:
    """A TCP proxy between queue-janitor and NATS. The first time the
    service sends one of ``patterns`` (its delete of the job's queue), the
    proxy stops forwarding that connection's traffic to NATS (the request
    never reaches the server) and sets ``held``. ``drop()`` then closes the
    held connection: the service reconnects through the proxy, which from
    then on forwards everything."""

    def __init__(self, upstream_port: int, patterns: List[bytes]) -> None:
        self.upstream_port = upstream_port
        self.patterns = patterns
        self.held = asyncio.Event()
        self.holding = False
        self.port = 0
        self._server: Optional[asyncio.base_events.Server] = None
        self._writers: List[asyncio.StreamWriter] = []
        self._held_writers: List[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        pair = [writer, up_writer]

        async def to_server() -> None:
            tail = b""
            held = False
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if held:
                    continue  # never reaches the server
                window = tail + data
                if self.holding and any(p in window for p in self.patterns):
                    held = True
                    self._held_writers += pair
                    self.held.set()
                    continue
                tail = window[-256:]
                up_writer.write(data)
                await up_writer.drain()

        async def to_client() -> None:
            while True:
                data = await up_reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(to_server(), to_client())
        except (ConnectionError, OSError):
            pass
        finally:
            for w in pair:
                w.close()

    def arm(self) -> None:
        """Hold from the next matching request on."""
        self.held.clear()
        self.holding = True

    def drop(self) -> None:
        self.holding = False
        for w in self._held_writers:
            w.close()

    async def close(self) -> None:
        self.holding = False
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()


class StartFallback(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        import nats
        self.procs: List[realnats.Proc] = []
        self.nats, self.url = await asyncio.to_thread(realnats.start_nats)
        self.procs.append(self.nats)
        self.addAsyncCleanup(asyncio.to_thread, self.nats.stop)
        self.nc = await nats.connect(self.url, **ANTENNA_CONNECT)
        self.js = self.nc.jetstream()
        self.answers = Answers()
        await self.nc.subscribe("job.queue.>", cb=self.answers.on)
        await self.nc.flush()

    async def asyncTearDown(self) -> None:
        await self.nc.close()

    async def serve(self, url: Optional[str] = None, *, reconcile: bool = True) -> realnats.Proc:
        """queue-janitor serve; with ``reconcile`` its reconciler runs fast,
        without it not at all (it would clean the leftover the test made)."""
        flags = FAST_RECONCILE if reconcile else ["--reconcile-interval", "0"]
        proc = await asyncio.to_thread(realnats.start_serve, url or self.url, *flags)
        self.procs.append(proc)
        self.addAsyncCleanup(asyncio.to_thread, proc.stop)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path} ---\n{p.output()}" for p in self.procs)

    async def leftover(self, pk: int, *, terminal: bool = True) -> int:
        """Run 1 ended (with ``terminal``: REVOKED, its queue cleaned by the
        service, which records the job as terminal), then Antenna re-created
        the queue and published into it: a leftover of 7 tasks, 2 of them
        handed to a worker and never acked."""
        await create_antenna_queue(self.js, pk, tasks=3)
        if terminal:
            await asyncio.to_thread(job_events(self.url).changed, Job(pk, "REVOKED"), previous_status="STARTED")
            await self.answers.wait_for(f"job.queue.cleaned.{pk}")
        await create_antenna_queue(self.js, pk, tasks=7)
        sub = await self.js.pull_subscribe(f"job.{pk}.tasks", durable=f"job-{pk}-consumer", stream=f"job_{pk}")
        self.assertEqual(len(await sub.fetch(2, timeout=5)), 2)
        await sub.unsubscribe()
        return 7 if terminal else 10

    async def bucket_a_lease_old(self) -> None:
        """Wait until the service's bucket is older than one lease, as it is
        in a deployment (a young bucket adds a wait: scenario c)."""
        while True:
            info = await raw_stream_info(self.nc, "KV_queue_janitor_jobs")
            from job_status_events.jsapi import parse_time_ns
            age = (parse_time_ns(info["ts"]) - parse_time_ns(info["created"])) / 1e9
            if age >= LEASE_S:
                return
            await asyncio.sleep(LEASE_S - age)

    async def start(self, pk: int) -> dict:
        started = time.monotonic()
        done = await asyncio.to_thread(job_events(self.url).restart, Job(pk, "PENDING"), actor="user@example.org")
        done["measured"] = time.monotonic() - started
        return done

    async def new_round_runs_clean(self, pk: int, done: dict) -> None:
        """The new round as MLJob.run publishes it (4 tasks, ids 100..103),
        drained by a worker: each task once, nothing of the leftover."""
        info = await raw_stream_info(self.nc, f"job_{pk}")
        self.assertEqual(info["config"]["metadata"]["job_attempt"], str(done["attempt"]), "stamped at the Start")
        self.assertEqual(info["state"]["messages"], 0, "no leftover in the new run's stream")
        await create_antenna_queue(self.js, pk, tasks=4, start=100)
        worker = Worker(self.js, pk)
        await worker.drain()
        self.assertEqual(worker.deliveries, {100: 1, 101: 1, 102: 1, 103: 1})

    async def new_run_intact(self, pk: int, done: dict) -> None:
        info = await raw_stream_info(self.nc, f"job_{pk}")
        self.assertIsNotNone(info, "the new run's stream is kept\n" + self.logs())
        self.assertEqual(info["config"]["metadata"]["job_attempt"], str(done["attempt"]))
        self.assertEqual(info["state"]["messages"], 4, "with its tasks")
        self.assertEqual(await Worker(self.js, pk).drain(0.5), 0, "none of them delivered again")

    async def passes(self, proc: realnats.Proc, n: int) -> None:
        """Wait for n more reconciler passes."""
        def count() -> int:
            return sum(1 for line in proc.output(10**7).splitlines() if '"reconciler pass"' in line)
        target = count() + n
        deadline = time.monotonic() + 60
        while count() < target:
            if time.monotonic() > deadline:
                raise AssertionError("no reconciler pass\n" + proc.output())
            await asyncio.sleep(0.2)

    async def service_comes_back_and_keeps_the_new_run(self, pk: int, done: dict, *, start_service: bool = True,
                                                       answered: bool = True) -> None:
        proc = await self.serve() if start_service else self.procs[-1]
        if answered:
            answers = await self.answers.wait_for(f"job.queue.flushed.{pk}", timeout=60)
            ours = [a for a in answers if a["cause_event_id"] == done["event_id"]]
            self.assertTrue(ours, answers)
            self.assertIn(ours[-1]["outcome"], ("already_done", "kept_later_run"), ours)
            self.assertEqual(ours[-1]["deleted"], [], "the service deletes nothing of the new run")
            realnats.report(f"the service, back, answered the waiting request: {ours[-1]['outcome']}")
        await realnats.settled(self.nc, 60)
        await self.passes(proc, 2)  # the new run's stream is older than the grace by now
        await self.new_run_intact(pk, done)
        record = await realnats.record(self.nc, pk)
        self.assertEqual(record.get("restart_attempt"), done["attempt"], record)
        self.assertNotIn("lease", record)

    async def test_a_service_stopped(self):
        pk = 2101
        serve = await self.serve(reconcile=False)
        await self.leftover(pk)
        await self.bucket_a_lease_old()
        await asyncio.to_thread(serve.stop)
        self.procs.remove(serve)
        done = await self.start(pk)
        realnats.report(f"(a) service stopped: Start waited {done['measured']:.2f}s ({done['reason']})")
        self.assertEqual((done["path"], done["outcome"]), ("fallback", "removed"), done)
        self.assertEqual(done["messages_discarded"], 7)
        self.assertIn("did not answer within 5s", done["reason"])
        waiting = await realnats.last_event(self.nc, "job.status.restart_requested")
        self.assertEqual(waiting["id"], done["event_id"], "the request waits in JOB_EVENTS")
        await self.new_round_runs_clean(pk, done)
        await self.service_comes_back_and_keeps_the_new_run(pk, done)

    async def test_b_service_frozen_holding_the_lease(self):
        pk = 2201
        patterns = [f"$JS.API.STREAM.PURGE.job_{pk}".encode(), f"$JS.API.STREAM.DELETE.job_{pk}".encode(),
                    f"$JS.API.CONSUMER.DELETE.job_{pk}.".encode(),
                    f"$JS.API.CONSUMER.DELETE.advisories.job-{pk}-dlq".encode()]
        proxy = HoldingProxy(int(self.url.rsplit(":", 1)[1]), patterns)
        await proxy.start()
        self.addAsyncCleanup(proxy.close)
        serve = await self.serve(f"nats://127.0.0.1:{proxy.port}")
        left = await self.leftover(pk, terminal=False)  # unknown to the service: its reconciler only reports it
        await self.bucket_a_lease_old()
        proxy.arm()
        start = asyncio.ensure_future(self.start(pk))
        try:
            await asyncio.wait_for(proxy.held.wait(), 30)
        except asyncio.TimeoutError:
            start.cancel()
            raise AssertionError("the service never sent its delete\n" + self.logs())
        serve.signal(signal.SIGSTOP)
        lease = (await realnats.record(self.nc, pk) or {}).get("lease") or {}
        self.assertTrue(lease and not lease["owner"].startswith("backend:"), f"frozen holding the lease: {lease}")
        self.assertIsNotNone(await raw_stream_info(self.nc, f"job_{pk}"), "frozen mid-flush: nothing deleted yet")
        done = await start
        realnats.report(f"(b) service frozen holding the lease: Start waited {done['measured']:.2f}s "
                        f"({done['reason']})")
        self.assertEqual((done["path"], done["outcome"]), ("fallback", "removed"), done)
        self.assertEqual(done["messages_discarded"], left)
        await self.new_round_runs_clean(pk, done)
        # The service thaws: its held connection is gone, its claim's authority
        # long over; it reconnects and handles the request again.
        proxy.drop()
        serve.signal(signal.SIGCONT)
        await self.service_comes_back_and_keeps_the_new_run(pk, done, start_service=False)

    async def test_c_no_event_stream(self):
        pk = 2301
        await create_antenna_queue(self.js, pk, tasks=7)   # Antenna ran; queue-janitor never did
        done = await self.start(pk)
        realnats.report(f"(c) no event stream, no bucket: Start waited {done['measured']:.2f}s ({done['reason']})")
        self.assertEqual((done["path"], done["outcome"]), ("fallback", "removed"), done)
        self.assertIn("could not be published", done["reason"])
        self.assertIn("no response from stream", done["reason"])
        self.assertEqual(done["messages_discarded"], 7)
        await self.new_round_runs_clean(pk, done)
        # The service starts on this server: it binds the bucket the Start
        # created, creates its event stream; its reconciler keeps the new run.
        await self.service_comes_back_and_keeps_the_new_run(pk, done, answered=False)
        # And a second Start, now that the service runs, goes through it.
        again = await self.start(pk)
        self.assertEqual((again["path"], again["outcome"]), ("service", "removed"), again)
        self.assertGreater(again["attempt"], done["attempt"])
        realnats.report(f"(c) then with the service: Start waited {again['measured']:.2f}s")

    async def test_d_job_events_deleted_but_bucket_kept(self):
        # The event stream alone is gone (the service recreates it within
        # about a second when it runs; here it does not run): no quarantine.
        pk = 2401
        serve = await self.serve(reconcile=False)
        await self.leftover(pk)
        await self.bucket_a_lease_old()
        await asyncio.to_thread(serve.stop)
        self.procs.remove(serve)
        await self.js.delete_stream("JOB_EVENTS")
        done = await self.start(pk)
        realnats.report(f"(c') event stream deleted, bucket kept: Start waited {done['measured']:.2f}s")
        self.assertEqual((done["path"], done["outcome"], done["messages_discarded"]), ("fallback", "removed", 7))
        await self.new_round_runs_clean(pk, done)

    async def test_e_a_live_claim_that_never_answers_fails_the_start(self):
        # The one failure left: a claim of the service holds the job, keeps
        # renewing its lease, and never answers. (The test renews a lease as
        # the service would; short settings keep the test short.)
        from job_status_events import FlushTimeout
        pk = 2501
        serve = await self.serve(reconcile=False)
        await create_antenna_queue(self.js, pk, tasks=3)
        await asyncio.to_thread(serve.stop)
        self.procs.remove(serve)
        kv = await self.js.key_value("queue_janitor_jobs")
        stop = asyncio.Event()

        async def renew() -> None:
            while not stop.is_set():
                await kv.put(f"job.{pk}", json.dumps({"v": 2, "state": "flushed", "lease": {
                    "owner": "queue-janitor-test", "token": "t" * 24, "ttl": 12 * 10**9,
                    "until": "2026-12-31T00:00:00Z"}}).encode())
                await asyncio.sleep(1)

        renewer = asyncio.ensure_future(renew())
        try:
            events = job_events(self.url, handshake_wait=1, lease=4, fallback_max_wait=3)
            with self.assertRaises(FlushTimeout) as caught:
                await asyncio.to_thread(events.restart, Job(pk, "PENDING"))
        finally:
            stop.set()
            await renewer
        self.assertIn("queue-janitor-test", str(caught.exception))
        self.assertIn("do not publish the new round", str(caught.exception))
        info = await raw_stream_info(self.nc, f"job_{pk}")
        self.assertEqual(info["state"]["messages"], 3, "nothing touched while the service held the job")


if __name__ == "__main__":
    unittest.main()
