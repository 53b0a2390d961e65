"""The package without nats-py, and nats_adapter's wiring against a stand-in
for the parts of nats-py's API it calls (nats-py itself is not installed on CI
and is never imported here)."""

import asyncio
import importlib
import json
import os
import subprocess
import sys
import types
import unittest
from dataclasses import dataclass
from typing import Dict, List, Optional
from unittest import mock

from job_status_events import EventConfig

from .helpers import T0, flushed_event, ids

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CoreWithoutDependenciesTest(unittest.TestCase):
    def test_import_pulls_in_neither_nats_nor_opentelemetry(self):
        code = ("import sys, job_status_events, job_status_events.restart, job_status_events.streams;"
                "print(sorted(m for m in sys.modules if m.split('.')[0] in ('nats', 'opentelemetry')))")
        out = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "[]")

    def test_adapter_needs_nats(self):
        code = "import sys; sys.modules['nats'] = None; import job_status_events.nats_adapter"
        out = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("ImportError: job_status_events.nats_adapter needs nats-py >= 2.6", out.stderr)


# --- a stand-in for nats-py ------------------------------------------------------


class BadSubscriptionError(Exception):
    pass


class ConnectionClosedError(Exception):
    pass


class ConnectionDrainingError(Exception):
    pass


class NotFoundError(Exception):
    pass


@dataclass
class StreamConfig:  # the nats.js.api.StreamConfig fields the adapter uses
    name: Optional[str] = None
    subjects: Optional[List[str]] = None
    retention: Optional[str] = None
    storage: Optional[str] = None
    max_age: Optional[float] = None
    metadata: Optional[Dict[str, str]] = None


@dataclass
class ConsumerConfig:  # likewise nats.js.api.ConsumerConfig
    durable_name: Optional[str] = None
    ack_policy: Optional[str] = None
    ack_wait: Optional[float] = None
    max_deliver: Optional[int] = None
    filter_subject: Optional[str] = None
    metadata: Optional[Dict[str, str]] = None


@dataclass
class Msg:
    subject: str
    data: bytes
    headers: Optional[Dict[str, str]] = None


@dataclass
class PubAck:
    stream: str
    seq: int
    duplicate: Optional[bool] = None


class MessageIterator:
    def __init__(self):
        self.queue = asyncio.Queue()

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item


class Subscription:
    def __init__(self, nc, subject):
        self.nc, self.subject, self.closed = nc, subject, False
        self.messages = MessageIterator()

    async def unsubscribe(self, limit=0):
        self.nc.calls.append(("unsubscribe", self.subject))
        if self.closed:
            raise BadSubscriptionError()
        self.closed = True
        self.messages.queue.put_nowait(None)


class JetStream:
    def __init__(self, nc):
        self.nc = nc
        self.streams = {"advisories": None} if nc.has_advisories else {}

    async def publish(self, subject, payload=b"", timeout=None, stream=None, headers=None):
        self.nc.calls.append(("js.publish", subject, payload, timeout, dict(headers)))
        if self.nc.respond:
            for out_subject, out_headers, out_body in self.nc.respond(subject, payload, headers):
                self.nc.deliver(out_subject, out_headers, out_body)
        return PubAck(stream="JOB_EVENTS", seq=len(self.nc.calls), duplicate=False)

    async def add_stream(self, config=None, **params):
        self.nc.calls.append(("add_stream", config))
        self.streams[config.name] = config

    async def add_consumer(self, stream, config=None, timeout=None, **params):
        self.nc.calls.append(("add_consumer", stream, config))

    async def stream_info(self, name):
        if name not in self.streams:
            raise NotFoundError(name)
        return self.streams[name]


class Client:
    def __init__(self, respond=None, has_advisories=True):
        self.calls = []
        self.subs = []
        self.respond = respond
        self.has_advisories = has_advisories

    def jetstream(self, **kw):
        return JetStream(self)

    async def subscribe(self, subject, queue="", cb=None):
        self.calls.append(("subscribe", subject))
        sub = Subscription(self, subject)
        self.subs.append(sub)
        return sub

    async def flush(self, timeout=10):
        self.calls.append(("flush",))

    async def close(self):
        self.calls.append(("close",))

    def deliver(self, subject, headers, body):
        for sub in self.subs:
            if sub.subject == subject and not sub.closed:
                sub.messages.queue.put_nowait(Msg(subject, body, headers))


def fake_nats(client):
    nats = types.ModuleType("nats")
    errors = types.ModuleType("nats.errors")
    errors.BadSubscriptionError = BadSubscriptionError
    errors.ConnectionClosedError = ConnectionClosedError
    errors.ConnectionDrainingError = ConnectionDrainingError
    js = types.ModuleType("nats.js")
    js_errors = types.ModuleType("nats.js.errors")
    js_errors.NotFoundError = NotFoundError
    api = types.ModuleType("nats.js.api")
    api.StreamConfig, api.ConsumerConfig = StreamConfig, ConsumerConfig

    async def connect(servers=None, **options):
        client.calls.append(("connect", servers, options))
        return client

    nats.connect, nats.errors, nats.js = connect, errors, js
    js.errors, js.api = js_errors, api
    return {"nats": nats, "nats.errors": errors, "nats.js": js, "nats.js.errors": js_errors, "nats.js.api": api}


class AdapterCase:
    def load(self, client):
        patcher = mock.patch.dict(sys.modules, fake_nats(client))
        patcher.start()
        self.addCleanup(patcher.stop)
        sys.modules.pop("job_status_events.nats_adapter", None)
        return importlib.import_module("job_status_events.nats_adapter")


def answer(subject, payload, headers):
    if subject != "job.status.restart_requested":
        return []
    cause = json.loads(payload)["id"]
    return [("job.queue.flushed.42", *flushed_event(42, cause, "removed", attempt=4))]


class NatsTransportTest(AdapterCase, unittest.IsolatedAsyncioTestCase):
    async def test_publish_is_a_jetstream_publish_with_headers(self):
        nc = Client()
        adapter = self.load(nc)
        await adapter.NatsTransport(nc, publish_timeout=2.5).publish("job.status.revoked", b"{}", {"Nats-Msg-Id": "a"})
        self.assertEqual(nc.calls, [("js.publish", "job.status.revoked", b"{}", 2.5, {"Nats-Msg-Id": "a"})])

    async def test_subscribe_flushes_then_iterates_and_unsubscribes(self):
        nc = Client()
        adapter = self.load(nc)
        sub = await adapter.NatsTransport(nc).subscribe("job.queue.flushed.42")
        self.assertEqual(nc.calls, [("subscribe", "job.queue.flushed.42"), ("flush",)])
        nc.deliver("job.queue.flushed.42", {"Content-Type": "x"}, b"one")
        it = sub.__aiter__()
        self.assertEqual(await it.__anext__(), ({"Content-Type": "x"}, b"one"))
        await sub.aclose()
        with self.assertRaises(StopAsyncIteration):
            await it.__anext__()
        await sub.aclose()  # a second close is harmless
        self.assertEqual(nc.calls[-2:], [("unsubscribe", "job.queue.flushed.42")] * 2)

    async def test_restart_handshake_and_provisioning(self):
        nc = Client(respond=answer, has_advisories=False)
        adapter = self.load(nc)
        transport = adapter.NatsTransport(nc)
        from job_status_events import StatusPublisher, request_restart

        pub = StatusPublisher(transport.publish, EventConfig(trace_context=None, id_factory=ids("r-1")))
        data = await request_restart(pub, transport.subscribe, 42, 4, time=T0, timeout=5)
        self.assertEqual((data["cause_event_id"], data["outcome"]), ("r-1", "removed"))
        self.assertEqual([c[0] for c in nc.calls], ["subscribe", "flush", "js.publish", "unsubscribe"])
        await adapter.provision_task_queue(transport.jetstream, 42, 4)
        made = nc.calls[4:]
        self.assertEqual(made[0], ("add_stream", StreamConfig(
            name="job_42", subjects=["job.42.tasks"], retention="limits", storage="file", max_age=86400.0,
            metadata={"job_attempt": "4"})))
        self.assertEqual(made[1], ("add_consumer", "job_42", ConsumerConfig(
            durable_name="job-42-consumer", ack_policy="explicit", ack_wait=30.0, max_deliver=5,
            metadata={"job_attempt": "4"})))
        self.assertEqual(made[2][1].name, "advisories")  # created, since it was missing
        self.assertEqual(made[3], ("add_consumer", "advisories", ConsumerConfig(
            durable_name="job-42-dlq", ack_policy="explicit",
            filter_subject="$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.job_42.*", metadata={"job_attempt": "4"})))
        self.assertEqual(len(made), 4)


class SyncHelpersTest(AdapterCase, unittest.TestCase):
    def test_publish_status_sync_connects_publishes_closes(self):
        nc = Client()
        adapter = self.load(nc)
        conf = EventConfig(trace_context=None, id_factory=ids("s-1"))
        msg = adapter.publish_status_sync("nats://nats:4222", 42, "REVOKED", config=conf, time=T0, actor="watchdog",
                                          connect_options={"name": "job-backend"})
        self.assertEqual(nc.calls[0], ("connect", "nats://nats:4222", {"name": "job-backend"}))
        self.assertEqual(nc.calls[1][:3], ("js.publish", "job.status.revoked", msg.body))
        self.assertEqual(nc.calls[1][4]["Nats-Msg-Id"], "s-1")
        self.assertEqual(nc.calls[2:], [("close",)])

    def test_publish_message_sync_sends_the_built_bytes(self):
        from job_status_events import build_status_event

        nc = Client()
        adapter = self.load(nc)
        msg = build_status_event(42, "CANCELLED", time=T0, config=EventConfig(trace_context=None), event_id="m-1")
        adapter.publish_message_sync("nats://nats:4222", msg.subject, msg.body, msg.headers)
        self.assertEqual(nc.calls[1:], [("js.publish", "job.status.cancelled", msg.body, 5.0, msg.headers),
                                        ("close",)])

    def test_request_restart_sync_with_provision(self):
        nc = Client(respond=answer)
        adapter = self.load(nc)
        conf = EventConfig(trace_context=None, id_factory=ids("s-2"))
        data = adapter.request_restart_sync("nats://nats:4222", 42, 4, time=T0, config=conf, provision=True,
                                            actor="alice")
        self.assertEqual(data["cause_event_id"], "s-2")
        kinds = [c[0] for c in nc.calls]
        self.assertEqual(kinds, ["connect", "subscribe", "flush", "js.publish", "unsubscribe",
                                 "add_stream", "add_consumer", "add_consumer", "close"])


if __name__ == "__main__":
    unittest.main()
