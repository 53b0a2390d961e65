"""One-line call sites for a Django job backend shaped like Antenna.

``JobEvents`` takes the job itself (anything with ``pk``, ``status`` and
``dispatch_mode``, and ``attempt`` if the model has one) and does the rest:

* ``events.changed(job, previous_status=...)`` right after a status write:
  the event is built at once (the job's values of that moment, the time now
  in UTC) and published when the surrounding transaction commits
  (``django.db.transaction.on_commit``; at once outside a transaction), so it
  reaches NATS before the code moves the job on. It never raises: a failure
  to build or to publish is logged (the status is committed; a lost
  terminal event leaves the queue to the backend's own cleanup, the stream's
  max age or an operator's ``queue-janitor clean``).
* ``events.deleted(job)`` when a job row is deleted: a ``deleted`` status
  event, terminal for a service run with ``--terminal-statuses ...,deleted``.
* ``events.restart(job)`` on the Start path, before the job is put back into
  a state that serves tasks: the flush handshake. It raises ``FlushError``
  (do not publish the new round) and returns the ``flushed`` answer.

Nothing here imports Django or nats-py until it is used; both can be
replaced (``on_commit``, ``publish``, ``restart``) for tests.
"""

from __future__ import annotations

import datetime as _dt
import logging
from typing import Any, Callable, Dict, Optional, Tuple

from .events import EventConfig, StatusMessage, build_status_event
from .streams import DEFAULT_FLUSHED_SUBJECT

log = logging.getLogger("job_status_events")

#: The status a job deletion is announced with (``--terminal-statuses``
#: must contain it for the service to clean the deleted job's queue).
DEFAULT_DELETED_STATUS = "deleted"

OnCommit = Callable[[Callable[[], None]], None]
PublishMessage = Callable[[StatusMessage], None]


def _django_on_commit(fn: Callable[[], None]) -> None:
    from django.db import transaction  # imported on first use only

    transaction.on_commit(fn)


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def job_fields(job: Any, attempt_field: Optional[str] = "attempt") -> Tuple[int, str, Optional[str], Optional[int]]:
    """``(pk, status, dispatch_mode, attempt)`` of a job, read now.

    ``status`` and ``dispatch_mode`` may be enum members (their ``value`` is
    used); ``attempt`` is None when the model has no such field."""
    def plain(v: Any) -> Any:
        return getattr(v, "value", v)

    attempt = getattr(job, attempt_field, None) if attempt_field else None
    mode = plain(getattr(job, "dispatch_mode", None))
    return job.pk, str(plain(job.status)), (str(mode) if mode else None), attempt


class JobEvents:
    """Status events and the restart handshake for one backend.

    servers
        NATS URL(s), e.g. ``settings.NATS_URL``.
    config
        How events are built; for Antenna set ``naive_time_zone`` to
        ``settings.TIME_ZONE`` and ``terminal_statuses`` to the service's
        ``--terminal-statuses`` (``revoked, failure, success, deleted``).
    connect_options
        nats-py ``connect`` options; Antenna's are ``connect_timeout=5,
        allow_reconnect=False``. ``max_reconnect_attempts`` defaults to 1
        here: nats-py (2.10.0) retries an unreachable server's *first*
        connection ``max_reconnect_attempts`` (default 60) times,
        ``reconnect_time_wait`` (2 s) apart, whatever ``allow_reconnect``
        says, which would hold a request thread for two minutes.
    restart_timeout, restart_tries
        Per-try wait for the ``flushed`` answer, and tries.
    attempt_field
        The job's attempt attribute; absent (Antenna today) means no attempt.
    """

    def __init__(
        self,
        servers: Any,
        *,
        config: Optional[EventConfig] = None,
        connect_options: Optional[Dict[str, Any]] = None,
        restart_timeout: float = 30.0,
        restart_tries: int = 3,
        flushed_subject: str = DEFAULT_FLUSHED_SUBJECT,
        attempt_field: Optional[str] = "attempt",
        deleted_status: str = DEFAULT_DELETED_STATUS,
        on_commit: Optional[OnCommit] = None,
        publish: Optional[PublishMessage] = None,
        restart: Optional[Callable[..., Dict[str, object]]] = None,
        now: Callable[[], _dt.datetime] = _utc_now,
    ) -> None:
        self.servers = servers
        self.config = config if config is not None else EventConfig()
        self.connect_options = {"max_reconnect_attempts": 1, **(connect_options or {})}
        self.restart_timeout = restart_timeout
        self.restart_tries = restart_tries
        self.flushed_subject = flushed_subject
        self.attempt_field = attempt_field
        self.deleted_status = deleted_status
        self._on_commit = on_commit or _django_on_commit
        self._publish = publish or self._publish_nats
        self._restart = restart
        self._now = now

    # -- status events -----------------------------------------------------

    def changed(
        self,
        job: Any,
        status: Optional[str] = None,
        *,
        previous_status: Optional[str] = None,
        reason: Optional[str] = None,
        actor: Optional[str] = None,
        at: Optional[_dt.datetime] = None,
    ) -> Optional[StatusMessage]:
        """Announce that ``job`` moved to ``status`` (default: ``job.status``).

        Call it right after the write, inside the transaction if there is
        one. Returns the built message, or None when it could not be built
        (logged). Never raises."""
        try:
            pk, current, mode, attempt = job_fields(job, self.attempt_field)
            msg = build_status_event(
                pk, status or current, time=at or self._now(), previous_status=previous_status,
                attempt=attempt, dispatch_mode=mode, reason=reason, actor=actor, config=self.config)
        except Exception:
            log.exception("job %s: could not build the %s status event", getattr(job, "pk", "?"), status)
            return None
        try:
            self._on_commit(lambda: self._send(msg))
        except Exception:
            log.exception("job %s: could not schedule the %s status event", msg.job_id, msg.status)
            return None
        return msg

    def deleted(self, job: Any, *, actor: Optional[str] = None, reason: Optional[str] = None) -> Optional[StatusMessage]:
        """Announce that ``job``'s row is deleted (e.g. from a ``post_delete``
        receiver): status ``deleted``, previous status the job's last one."""
        try:
            previous = job_fields(job, self.attempt_field)[1]
        except Exception:
            previous = None
        return self.changed(job, self.deleted_status, previous_status=previous, actor=actor, reason=reason)

    def _send(self, msg: StatusMessage) -> None:
        try:
            self._publish(msg)
        except Exception:
            log.exception("job %d: could not publish %s (event %s); queue-janitor will not hear of this "
                          "transition (queue-janitor clean --force %d removes a terminal job's queue by hand)",
                          msg.job_id, msg.subject, msg.event_id, msg.job_id)

    def _publish_nats(self, msg: StatusMessage) -> None:
        from .nats_adapter import publish_message_sync

        publish_message_sync(self.servers, msg.subject, msg.body, msg.headers, connect_options=self.connect_options)

    # -- the Start path ------------------------------------------------------

    def restart(
        self,
        job: Any,
        *,
        previous_status: Optional[str] = None,
        actor: Optional[str] = None,
        reason: Optional[str] = None,
    ) -> Dict[str, object]:
        """Ask queue-janitor to flush ``job``'s leftover queue and wait for
        the answer. Call it after the collect stage and before the job enters
        a state that serves tasks or publishes the new round. Returns the
        ``flushed`` answer's data; raises ``FlushError`` (``FlushTimeout``,
        ``RestartSuperseded``): then do not publish."""
        pk, current, mode, attempt = job_fields(job, self.attempt_field)
        run = self._restart
        if run is None:
            from .nats_adapter import request_restart_sync as run
        return run(
            self.servers, pk, attempt, time=self._now(), config=self.config, connect_options=self.connect_options,
            timeout=self.restart_timeout, tries=self.restart_tries, flushed_subject=self.flushed_subject,
            previous_status=previous_status or current, dispatch_mode=mode, actor=actor, reason=reason)


__all__ = ["DEFAULT_DELETED_STATUS", "JobEvents", "job_fields"]
