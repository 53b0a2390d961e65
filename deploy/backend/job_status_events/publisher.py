"""Publishing status events through an injected transport.

``publish`` is any ``async def publish(subject: str, body: bytes,
headers: dict[str, str])``; with nats-py it is
``nats_adapter.NatsTransport.publish`` (a JetStream publish, so the server
confirms that the event is stored in the service's event stream).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Dict

from .events import EventConfig, StatusMessage, build_status_event

log = logging.getLogger("job_status_events")

Publish = Callable[[str, bytes, Dict[str, str]], Awaitable[object]]
Sleep = Callable[[float], Awaitable[None]]


class StatusPublisher:
    """Builds and publishes ``job.status.<status>`` events.

    A failed publish is retried up to ``tries`` times in all, with the *same*
    message: its ``Nats-Msg-Id`` header equals the event id, so when a publish
    reached the stream but its acknowledgement was lost, the retry is
    de-duplicated by the server (within the stream's duplicate window, two
    minutes on the service's ``JOB_EVENTS``) instead of stored twice.
    """

    def __init__(
        self,
        publish: Publish,
        config: EventConfig = EventConfig(),
        *,
        tries: int = 3,
        retry_delay: float = 0.5,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if tries < 1:
            raise ValueError("tries must be at least 1")
        if retry_delay < 0:
            raise ValueError("retry_delay must not be negative")
        self._publish = publish
        self.config = config
        self._tries = tries
        self._retry_delay = retry_delay
        self._sleep = sleep

    def build(self, job_id: int, status: str, **fields: Any) -> StatusMessage:
        """``build_status_event`` with this publisher's configuration; ``fields``
        are its keyword arguments (time, previous_status, attempt,
        dispatch_mode, reason, actor, event_id)."""
        return build_status_event(job_id, status, config=self.config, **fields)

    async def send(self, msg: StatusMessage) -> None:
        """Publish a built message, retrying it unchanged on failure."""
        delay = self._retry_delay
        for n in range(1, self._tries + 1):
            try:
                await self._publish(msg.subject, msg.body, dict(msg.headers))
                return
            except Exception as exc:
                if n == self._tries:
                    log.error("publishing %s for job %d failed %d times: %s", msg.subject, msg.job_id, n, exc)
                    raise
                log.warning("publishing %s for job %d failed (try %d of %d), retrying in %.2fs: %s",
                            msg.subject, msg.job_id, n, self._tries, delay, exc)
            await self._sleep(delay)
            delay *= 2

    async def publish_status(self, job_id: int, status: str, **fields: Any) -> StatusMessage:
        """Build and publish one transition's event (``fields`` as for
        ``build``); returns what was sent."""
        msg = self.build(job_id, status, **fields)
        await self.send(msg)
        return msg
