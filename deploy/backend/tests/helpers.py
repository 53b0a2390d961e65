"""Test helpers: a decoder that applies the service's checks, fake transports."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from typing import Callable, Dict, List, Mapping, Optional, Tuple

T0 = dt.datetime(2026, 11, 28, 15, 5, 39, 250000, tzinfo=dt.timezone.utc)
T0_TEXT = "2026-11-28T15:05:39.250000Z"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def ids(*values: str) -> Callable[[], str]:
    """An id_factory returning the given ids in turn."""
    it = iter(values)
    return lambda: next(it)


def decode_like_service(subject: str, headers: Mapping[str, str], body: bytes, prefix: str = "job.status.") -> Dict:
    """Reads an event the way events/decode.go does, raising AssertionError
    on what the service would dead-letter. Returns attributes and data."""
    assert subject.startswith(prefix), subject
    token = subject[len(prefix):]
    assert re.fullmatch(r"[a-z][a-z0-9_]{0,63}", token), token
    h = {k.lower(): v for k, v in headers.items()}
    if h.get("content-type") == "application/cloudevents+json":
        ev = json.loads(body)
        data = ev.pop("data")
        attrs = ev
    else:
        assert "ce-specversion" in h, "neither structured nor binary"
        attrs = {k[3:]: v for k, v in h.items() if k.startswith("ce-")}
        assert h.get("content-type") == "application/json"
        data = json.loads(body)
    assert attrs["specversion"] == "1.0"
    for name in ("id", "source", "type", "subject"):
        assert attrs.get(name, "").strip(), f"missing {name}"
    want = "job.status." + token
    assert attrs["type"] == want or attrs["type"].endswith("." + want), attrs["type"]
    assert re.fullmatch(r"[1-9][0-9]{0,18}", attrs["subject"]), attrs["subject"]
    assert type(data["job_id"]) is int and data["job_id"] == int(attrs["subject"])
    assert data["status"].strip().lower() == token
    if "attempt" in data:
        assert type(data["attempt"]) is int and data["attempt"] >= 0
    if "time" in attrs:
        dt.datetime.strptime(attrs["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return {"attrs": attrs, "data": data}


def flushed_event(job_id: int, cause: str, outcome: str = "removed", *, attempt: Optional[int] = None,
                  deleted: Optional[List[str]] = None, discarded: int = 0) -> Tuple[Dict[str, str], bytes]:
    """A job.queue.flushed event as the service's Publisher emits it."""
    data: Dict[str, object] = {"job_id": job_id}
    if attempt is not None:
        data["attempt"] = attempt
    data.update({
        "status": "restart_requested", "cause_event_id": cause, "outcome": outcome,
        "stream": f"job_{job_id}", "stream_found": bool(deleted), "deleted": deleted or [],
        "messages_discarded": discarded, "consumers_removed": 0, "duration_ms": 1.5,
    })
    ev = {"specversion": "1.0", "id": "answer-" + cause, "source": "queue-janitor", "type": "job.queue.flushed",
          "subject": str(job_id), "datacontenttype": "application/json", "time": "2026-11-28T15:05:40Z",
          "data": data}
    return {"Content-Type": "application/cloudevents+json"}, json.dumps(ev).encode()


_END = object()


class FakeSubscription:
    def __init__(self, bus: "FakeBus", subject: str) -> None:
        self.bus = bus
        self.subject = subject
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False
        self.fail_with: Optional[Exception] = None

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.queue.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        return item

    async def aclose(self) -> None:
        self.bus.calls.append(("aclose", self.subject))
        if self.bus.aclose_error is not None:
            raise self.bus.aclose_error  # a broken close: the iteration does not end
        self.closed = True
        self.queue.put_nowait(_END)


class FakeBus:
    """Core-NATS-like: a message published while nobody subscribes is lost.

    ``responder(subject, body, headers)`` returns what the service would
    emit, as a list of (subject, headers, body); it is delivered at once to
    active subscriptions."""

    def __init__(self, responder=None) -> None:
        self.calls: List[Tuple] = []
        self.published: List[Tuple[str, bytes, Dict[str, str]]] = []
        self.subs: List[FakeSubscription] = []
        self.responder = responder
        self.publish_error: Optional[Exception] = None
        self.subscribe_error: Optional[Exception] = None
        self.aclose_error: Optional[Exception] = None

    async def publish(self, subject: str, body: bytes, headers: Dict[str, str]) -> None:
        self.calls.append(("publish", subject))
        if self.publish_error is not None:
            raise self.publish_error
        self.published.append((subject, body, headers))
        if self.responder is not None:
            for out_subject, out_headers, out_body in self.responder(subject, body, headers) or []:
                self.deliver(out_subject, out_headers, out_body)

    def deliver(self, subject: str, headers, body: bytes) -> None:
        for sub in self.subs:
            if sub.subject == subject and not sub.closed:
                sub.queue.put_nowait((headers, body))

    async def subscribe(self, subject: str) -> FakeSubscription:
        self.calls.append(("subscribe", subject))
        if self.subscribe_error is not None:
            raise self.subscribe_error
        sub = FakeSubscription(self, subject)
        self.subs.append(sub)
        return sub

    def restart_events(self) -> List[Dict]:
        return [decode_like_service(s, h, b) for s, b, h in self.published]
