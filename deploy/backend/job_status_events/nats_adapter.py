"""nats-py wiring for the core (needs ``pip install "nats-py>=2.6"``).

Not imported by the package's ``__init__``. CI has no nats-py, so the unit
tests check this module against a stand-in for the calls below, which are
nats-py's public asyncio API:

* ``nc = await nats.connect(servers, **options)``
* ``js = nc.jetstream()``; ``await js.publish(subject, payload, timeout=..., headers=...)``
* ``sub = await nc.subscribe(subject)``; ``async for msg in sub.messages``;
  ``await sub.unsubscribe()``
* ``await js.add_stream(StreamConfig(...))``, ``await js.add_consumer(stream, ConsumerConfig(...))``
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
from typing import Any, AsyncIterator, Dict, Mapping, Optional, Sequence, Tuple, Union

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js.api import ConsumerConfig, StreamConfig
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "job_status_events.nats_adapter needs nats-py >= 2.6: "
        "pip install 'nats-py>=2.6' (or the package's [nats] extra)") from exc

from .events import EventConfig, StatusMessage
from .publisher import StatusPublisher
from .restart import request_restart
from .streams import (
    DEFAULT_FLUSHED_SUBJECT,
    MAX_DELIVERIES_ADVISORY_PREFIX,
    dlq_consumer_config,
    task_consumer_config,
    task_stream_config,
)

log = logging.getLogger("job_status_events")

Servers = Union[str, Sequence[str]]


class NatsSubscription:
    """A core NATS subscription as the core expects it: an async iterator of
    ``(headers, body)`` with ``aclose()``."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub

    def __aiter__(self) -> AsyncIterator[Tuple[Optional[Mapping[str, str]], bytes]]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Tuple[Optional[Mapping[str, str]], bytes]]:
        # sub.messages ends (StopAsyncIteration) once unsubscribe() is called.
        async for msg in self._sub.messages:
            yield msg.headers, msg.data

    async def aclose(self) -> None:
        try:
            await self._sub.unsubscribe()
        except (nats.errors.BadSubscriptionError, nats.errors.ConnectionClosedError,
                nats.errors.ConnectionDrainingError):
            pass  # already gone with the connection


class NatsTransport:
    """``publish`` (JetStream, waits for the stream's acknowledgement) and
    ``subscribe`` (core NATS, where the service emits job.queue.flushed)."""

    def __init__(self, nc: Any, *, publish_timeout: float = 5.0) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._publish_timeout = publish_timeout

    @property
    def jetstream(self) -> Any:
        return self._js

    async def publish(self, subject: str, body: bytes, headers: Dict[str, str]) -> Any:
        ack = await self._js.publish(subject, body, timeout=self._publish_timeout, headers=headers)
        if getattr(ack, "duplicate", False):
            log.info("%s (Nats-Msg-Id %s) was already stored: de-duplicated", subject, headers.get("Nats-Msg-Id"))
        return ack

    async def subscribe(self, subject: str) -> NatsSubscription:
        sub = await self._nc.subscribe(subject)
        # A round trip: the server has registered the interest before the
        # restart request that it is waiting for goes out.
        await self._nc.flush()
        return NatsSubscription(sub)


async def connect(servers: Servers = "nats://127.0.0.1:4222", **options: Any) -> Any:
    """``nats.connect``; options as nats-py takes them (``user_credentials``,
    ``token``, ``user``/``password``, ``tls``, ``name``, ``connect_timeout``...)."""
    return await nats.connect(servers=servers, **options)


async def provision_task_queue(
    js: Any,
    job_id: int,
    attempt: Optional[int],
    *,
    advisory_stream: str = "advisories",
) -> None:
    """Create the job's task stream, task consumer and dead-letter consumer,
    each stamped with the attempt (the service's ``queue/provision.go``
    layout). Existing resources with the same configuration are kept."""
    stream_cfg = task_stream_config(job_id, attempt)
    await js.add_stream(StreamConfig(**stream_cfg))
    await js.add_consumer(str(stream_cfg["name"]), ConsumerConfig(**task_consumer_config(job_id, attempt)))
    try:
        await js.stream_info(advisory_stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(StreamConfig(name=advisory_stream, subjects=[MAX_DELIVERIES_ADVISORY_PREFIX + ">"],
                                         retention="limits", storage="file", max_age=24 * 3600.0))
    await js.add_consumer(advisory_stream, ConsumerConfig(**dlq_consumer_config(job_id, attempt)))


# --- synchronous helpers, for Django views and Celery tasks -----------------
# Each opens a connection, does its work and closes it. They use
# asyncio.run(), so they must not be called from a thread that already runs
# an event loop (an async view): there, await the async API instead.


def publish_message_sync(
    servers: Servers,
    subject: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    connect_options: Optional[Dict[str, Any]] = None,
    tries: int = 3,
) -> None:
    """Publish an already built event (a ``StatusMessage``'s subject, body and
    headers, or an outbox row's copy of them) exactly as it was built, so that
    a re-send carries the same ``Nats-Msg-Id`` and is de-duplicated."""

    async def run() -> None:
        nc = await connect(servers, **(connect_options or {}))
        try:
            publish = NatsTransport(nc).publish
            delay = 0.5
            for n in range(1, tries + 1):
                try:
                    await publish(subject, bytes(body), dict(headers))
                    return
                except Exception as exc:
                    if n == tries:
                        raise
                    log.warning("publishing %s failed (try %d of %d): %s", subject, n, tries, exc)
                await asyncio.sleep(delay)
                delay *= 2
        finally:
            await nc.close()

    asyncio.run(run())


def publish_status_sync(
    servers: Servers,
    job_id: int,
    status: str,
    *,
    config: EventConfig = EventConfig(),
    connect_options: Optional[Dict[str, Any]] = None,
    **fields: Any,
) -> StatusMessage:
    """Publish one status event; ``fields`` as ``StatusPublisher.publish_status``."""

    async def run() -> StatusMessage:
        nc = await connect(servers, **(connect_options or {}))
        try:
            return await StatusPublisher(NatsTransport(nc).publish, config).publish_status(job_id, status, **fields)
        finally:
            await nc.close()

    return asyncio.run(run())


def request_restart_sync(
    servers: Servers,
    job_id: int,
    attempt: int,
    *,
    time: _dt.datetime,
    config: EventConfig = EventConfig(),
    connect_options: Optional[Dict[str, Any]] = None,
    timeout: float = 30.0,
    tries: int = 3,
    flushed_subject: str = DEFAULT_FLUSHED_SUBJECT,
    provision: bool = False,
    **fields: Any,
) -> Dict[str, object]:
    """The Start path's handshake (``request_restart``); with ``provision``
    true, also creates the new run's stamped queue once the flush is answered."""

    async def run() -> Dict[str, object]:
        nc = await connect(servers, **(connect_options or {}))
        try:
            transport = NatsTransport(nc)
            flushed = await request_restart(
                StatusPublisher(transport.publish, config), transport.subscribe, job_id, attempt,
                time=time, timeout=timeout, tries=tries, flushed_subject=flushed_subject, **fields)
            if provision:
                await provision_task_queue(transport.jetstream, job_id, attempt)
            return flushed
        finally:
            await nc.close()

    return asyncio.run(run())
