"""nats-py wiring for the core (needs ``pip install "nats-py>=2.6"``).

Not imported by the package's ``__init__``. Tested against the real nats-py
2.10.0 (the version Antenna pins), real nats-servers (2.10.27 and go.mod's
2.15.2) and the real ``queue-janitor serve`` (tests/test_real_nats.py,
tests/test_start_fallback.py, tests/test_antenna.py). The calls it makes are
nats-py's public asyncio API:

* ``nc = await nats.connect(servers, **options)``
* ``js = nc.jetstream()``; ``await js.publish(subject, payload, timeout=..., headers=...)``
* ``sub = await nc.subscribe(subject)``; ``async for msg in sub.messages``;
  ``await sub.unsubscribe()``
* ``await js.add_stream(StreamConfig(...))``, ``await js.add_consumer(stream, ConsumerConfig(...))``
* ``await nc.request("$JS.API....", ...)`` for what nats-py's typed API leaves
  out (``jsapi``): the server's clock (``ts``), creation times, compare-and-set
  writes to the service's bucket.

The synchronous helpers open a connection, do one thing and close it:
``publish_message_sync``, ``publish_event_sync`` (with the run number read
from the job's stream), ``request_restart_sync`` (the bare handshake),
``start_run_sync`` (the Start path, with its fallback), ``end_queue_sync``
(the quiet teardown), ``task_round_sync`` (a result's round).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import threading
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Mapping, Optional, Sequence, Tuple, TypeVar, Union

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
from .restart import FlushError, request_restart
from .streams import (
    ADVISORY_STREAM,
    DEFAULT_FLUSHED_SUBJECT,
    advisory_stream_config,
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
    attempt: Optional[int] = None,
    *,
    advisory_stream: str = ADVISORY_STREAM,
) -> None:
    """Create the job's task stream, task consumer and dead-letter consumer
    with the backend's own settings (``streams``: Antenna's values), each
    stamped with the attempt when one is given; create the shared advisory
    stream as the backend does when it is missing. A backend that creates its
    queue itself (Antenna's ``TaskQueueManager``) does not need this."""
    stream_cfg = task_stream_config(job_id, attempt)
    await js.add_stream(StreamConfig(**stream_cfg))
    await js.add_consumer(str(stream_cfg["name"]), ConsumerConfig(**task_consumer_config(job_id, attempt)))
    try:
        await js.stream_info(advisory_stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(StreamConfig(**advisory_stream_config(name=advisory_stream)))
    await js.add_consumer(advisory_stream, ConsumerConfig(**dlq_consumer_config(job_id, attempt)))


# --- synchronous helpers, for Django views and Celery tasks -----------------
# Each opens a connection, does its work and closes it, in asyncio.run().
# Called from a thread that already runs an event loop (inside async_to_sync,
# an async view), they run on a helper thread and block the caller until
# done: there, prefer awaiting the async API.

T = TypeVar("T")


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run(make())``, on a helper thread when this thread already
    runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    box: Dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    t = threading.Thread(target=target, name="job_status_events-sync", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


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

    run_sync(run)


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

    return run_sync(run)


def request_restart_sync(
    servers: Servers,
    job_id: int,
    attempt: Optional[int],
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
    true, also creates the new run's queue (the backend's settings, stamped
    when there is an attempt) once the flush is answered. Raises what
    ``request_restart`` raises, and ``FlushError`` when NATS cannot be
    reached at all."""

    async def run() -> Dict[str, object]:
        try:
            nc = await connect(servers, **(connect_options or {}))
        except Exception as exc:
            raise FlushError(f"job {job_id}: cannot connect to NATS at {servers}: {exc!r}; do not publish the new round",
                             job_id=job_id, attempt=attempt, event_ids=[]) from exc
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

    return run_sync(run)


def publish_event_sync(
    servers: Servers,
    msg: StatusMessage,
    *,
    config: EventConfig = EventConfig(),
    connect_options: Optional[Dict[str, Any]] = None,
    stamp_from: Optional[Tuple[str, Any]] = None,
    tries: int = 3,
) -> StatusMessage:
    """Publish a built event; with ``stamp_from`` (the job's stream name and
    the service's ``BucketSettings``), first give it the run number stamped
    on the job's stream (else the service record's ``restart_attempt``), on
    the same connection and before the first try, so that a retried publish
    that reaches NATS late still names its run. Returns what was sent."""
    from .events import with_attempt
    from .teardown import read_run_attempt

    async def run() -> StatusMessage:
        nonlocal msg
        nc = await connect(servers, **(connect_options or {}))
        try:
            if stamp_from is not None and msg.attempt is None:
                try:
                    attempt = await read_run_attempt(nc, msg.job_id, stream_name=stamp_from[0], bucket=stamp_from[1])
                except Exception as exc:
                    log.info("job %d: could not read the run number for %s (%s); sent without it",
                             msg.job_id, msg.subject, exc)
                    attempt = None
                if attempt is not None:
                    msg = with_attempt(msg, attempt, config)
            publish = NatsTransport(nc).publish
            delay = 0.5
            for n in range(1, tries + 1):
                try:
                    await publish(msg.subject, msg.body, dict(msg.headers))
                    return msg
                except Exception as exc:
                    if n == tries:
                        raise
                    log.warning("publishing %s failed (try %d of %d): %s", msg.subject, n, tries, exc)
                await asyncio.sleep(delay)
                delay *= 2
            return msg
        finally:
            await nc.close()

    return run_sync(run)


def start_run_sync(
    servers: Servers,
    job_id: int,
    *,
    time: _dt.datetime,
    config: EventConfig = EventConfig(),
    settings: Any = None,
    connect_options: Optional[Dict[str, Any]] = None,
    **fields: Any,
) -> Any:
    """``start.start_run`` on its own connection (``settings``: a
    ``StartSettings``); ``FlushError`` when NATS cannot be reached."""
    from .handshake import StartSettings
    from .start import start_run

    async def run() -> Any:
        try:
            nc = await connect(servers, **(connect_options or {}))
        except Exception as exc:
            raise FlushError(f"job {job_id}: cannot connect to NATS at {servers}: {exc!r}; do not publish the new "
                             f"round", job_id=job_id, attempt=fields.get("attempt"), event_ids=[]) from exc
        try:
            return await start_run(nc, job_id, time=time, config=config,
                                   settings=settings if settings is not None else StartSettings(), **fields)
        finally:
            await nc.close()

    return run_sync(run)


def end_queue_sync(
    servers: Servers,
    job_id: int,
    *,
    connect_options: Optional[Dict[str, Any]] = None,
    job_logger: Optional[logging.Logger] = None,
    **names: Any,
) -> Tuple[bool, Optional[int]]:
    """``teardown.teardown`` on its own connection: ``(all gone, the run's
    attempt)``; ``(False, None)`` when NATS cannot be reached (logged)."""
    from .teardown import teardown

    async def run() -> Tuple[bool, Optional[int]]:
        try:
            nc = await connect(servers, **(connect_options or {}))
        except Exception as exc:
            for lg in filter(None, (log, job_logger)):
                lg.warning("Could not clean up the NATS queue of job '%s': cannot connect to NATS (%s); "
                           "queue-janitor removes it once told the job ended", job_id, exc)
            return False, None
        try:
            return await teardown(nc, job_id, loggers=[job_logger] if job_logger else [], **names)
        finally:
            await nc.close()

    return run_sync(run)


def task_round_sync(
    servers: Servers,
    job_id: int,
    reply_subject: str,
    *,
    stream_name: str,
    connect_options: Optional[Dict[str, Any]] = None,
) -> Optional[str]:
    """``rounds.task_round`` on its own connection: why the task is of an
    earlier round, or None. Skips the connection for a subject that is not
    a task acknowledgement of ``stream_name``."""
    from .rounds import parse_ack_subject, task_round

    ack = parse_ack_subject(reply_subject)
    if ack is None or ack.stream != stream_name:
        return None

    async def run() -> Optional[str]:
        nc = await connect(servers, **(connect_options or {}))
        try:
            return await task_round(nc, job_id, reply_subject, stream_name=stream_name)
        finally:
            await nc.close()

    return run_sync(run)
