"""One-line call sites for a Django job backend shaped like Antenna.

``JobEvents`` takes the job itself (anything with ``pk``, ``status`` and
``dispatch_mode``, and ``attempt`` if the model has one) and does the rest:

* ``events.restart(job)`` on the Start path, before the job enters a state
  that serves tasks: the job's leftovers are flushed (by queue-janitor, or
  here when it does not answer within ``handshake_wait``) and the new run's
  stream is created stamped with its run number. Only a live claim of the
  service that neither answers nor lets go stops it (``FlushTimeout``).
* ``events.end_queue(job_id, job)`` where the backend tears down a finished
  job's queue: deletes it with "not found" as success (queue-janitor may
  have been first), then announces the job's terminal status with the run
  number stamped on its stream. One call covers every terminal writer that
  tears its queue down.
* ``events.result_is_current(job_id, reply_subject)`` in the result handler:
  False for a result whose task came from an earlier round (queued before
  the current round's stream was created), which must not count.
* ``events.changed(job, previous_status=...)`` right after any other status
  write one wants announced, and ``events.deleted(job)`` when a job row is
  deleted: built at once, published when the transaction commits
  (``django.db.transaction.on_commit``; at once outside one), never raising.

Nothing here imports Django or nats-py until it is used; both can be
replaced (``on_commit``, ``publish``, ``restart``, ``attempt_lookup``,
``end``, ``task_round``) for tests.
"""

from __future__ import annotations

import datetime as _dt
import logging
from types import SimpleNamespace
from typing import Any, Callable, Dict, Optional, Tuple

from .events import EventConfig, StatusMessage, build_status_event, with_attempt
from .handshake import BucketSettings, StartSettings, summary
from .streams import DEFAULT_CONSUMER_PATTERN, DEFAULT_FLUSHED_SUBJECT, fill

log = logging.getLogger("job_status_events")

#: The status a job deletion is announced with (``--terminal-statuses``
#: must contain it for the service to clean the deleted job's queue).
DEFAULT_DELETED_STATUS = "deleted"

OnCommit = Callable[[Callable[[], None]], None]
PublishMessage = Callable[[StatusMessage], None]

#: ``changed(attempt=...)`` left out: the job's own attempt, else (terminal
#: statuses) the run number stamped on its stream, looked up when sending.
LOOKUP = object()


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
    """Status events, the Start path and the queue's end for one backend.

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
    handshake_wait
        Seconds a Start waits for queue-janitor's answer before flushing
        the leftovers itself (default 5).
    lease
        The service's ``--lease`` (default 12 s): the fallback takes the
        job's lease as a replica of the service does.
    fallback_max_wait
        Longest the fallback waits for a live claim of the service on the
        job (default 30 s); then ``FlushTimeout``.
    kv_bucket, kv_replicas, kv_ttl
        The service's ``--kv-bucket``, ``--kv-replicas``, ``--kv-ttl``; the
        bucket is created with them only when the fallback finds it missing.
    attempt_field
        The job's attempt attribute; absent (Antenna) means the Start path
        numbers runs from the NATS server's clock.
    """

    def __init__(
        self,
        servers: Any,
        *,
        config: Optional[EventConfig] = None,
        connect_options: Optional[Dict[str, Any]] = None,
        handshake_wait: float = 5.0,
        lease: float = 12.0,
        fallback_max_wait: float = 30.0,
        kv_bucket: str = BucketSettings.bucket,
        kv_replicas: int = 1,
        kv_ttl: float = BucketSettings.ttl,
        flushed_subject: str = DEFAULT_FLUSHED_SUBJECT,
        consumer_pattern: str = DEFAULT_CONSUMER_PATTERN,
        attempt_field: Optional[str] = "attempt",
        deleted_status: str = DEFAULT_DELETED_STATUS,
        on_commit: Optional[OnCommit] = None,
        publish: Optional[PublishMessage] = None,
        attempt_lookup: Optional[Callable[[int], Optional[int]]] = None,
        restart: Optional[Callable[..., Any]] = None,
        end: Optional[Callable[..., Tuple[bool, Optional[int]]]] = None,
        task_round: Optional[Callable[..., Optional[str]]] = None,
        now: Callable[[], _dt.datetime] = _utc_now,
    ) -> None:
        self.servers = servers
        self.config = config if config is not None else EventConfig()
        self.connect_options = {"max_reconnect_attempts": 1, **(connect_options or {})}
        self.start_settings = StartSettings(
            handshake_wait=handshake_wait, lease=lease, fallback_max_wait=fallback_max_wait,
            bucket=BucketSettings(bucket=kv_bucket, replicas=kv_replicas, ttl=kv_ttl), flushed_subject=flushed_subject)
        fill(consumer_pattern, 1)
        self.consumer_pattern = consumer_pattern
        self.attempt_field = attempt_field
        self.deleted_status = deleted_status
        self._on_commit = on_commit or _django_on_commit
        self._publish = publish
        self._attempt_lookup = attempt_lookup
        self._restart = restart
        self._end = end
        self._task_round = task_round
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
        attempt: Any = LOOKUP,
    ) -> Optional[StatusMessage]:
        """Announce that ``job`` moved to ``status`` (default: ``job.status``).

        Call it right after the write, inside the transaction if there is
        one. ``attempt`` left out: the job's own attempt field, else, for a
        terminal status, the run number stamped on the job's stream (read
        when sending); ``None``: no attempt. Returns the built message, or
        None when it could not be built (logged). Never raises."""
        try:
            pk, current, mode, own = job_fields(job, self.attempt_field)
            lookup = attempt is LOOKUP and own is None
            run = own if attempt is LOOKUP else attempt
            msg = build_status_event(
                pk, status or current, time=at or self._now(), previous_status=previous_status,
                attempt=run, dispatch_mode=mode, reason=reason, actor=actor, config=self.config)
            lookup = lookup and msg.status in self.config.terminal_statuses
        except Exception:
            log.exception("job %s: could not build the %s status event", getattr(job, "pk", "?"), status)
            return None
        try:
            self._on_commit(lambda: self._send(msg, lookup))
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

    def _send(self, msg: StatusMessage, lookup: bool = False) -> None:
        try:
            if self._publish is None:
                self._publish_nats(msg, lookup)
                return
            if lookup and self._attempt_lookup is not None:
                run = self._attempt_lookup(msg.job_id)
                if run is not None:
                    msg = with_attempt(msg, run, self.config)
            self._publish(msg)
        except Exception:
            log.exception("job %d: could not publish %s (event %s); queue-janitor will not hear of this "
                          "transition (queue-janitor clean --force %d removes a terminal job's queue by hand)",
                          msg.job_id, msg.subject, msg.event_id, msg.job_id)

    def _publish_nats(self, msg: StatusMessage, lookup: bool) -> None:
        from .nats_adapter import publish_event_sync

        s = self.start_settings
        publish_event_sync(self.servers, msg, config=self.config, connect_options=self.connect_options,
                           stamp_from=(fill(s.stream_pattern, msg.job_id), s.bucket) if lookup else None)

    # -- the Start path ------------------------------------------------------

    def restart(
        self,
        job: Any,
        *,
        previous_status: Optional[str] = None,
        actor: Optional[str] = None,
        reason: Optional[str] = None,
    ) -> Dict[str, object]:
        """Flush ``job``'s leftover queue and stamp its new run; call it after
        the job's previous run ended and before the job enters a state that
        serves tasks. Returns what was done (``StartResult.as_dict()``:
        ``path``, ``outcome``, ``attempt``, ``reason``, ``waited``,
        ``deleted``...), logged at INFO on the module's logger and
        ``job.logger`` when the job has one. Raises ``FlushTimeout`` (a live
        claim of the service holds the job and neither answers nor lets go
        within ``fallback_max_wait``), ``RestartSuperseded`` (the service
        answered ``stale``) or ``FlushError`` (NATS unreachable): then do not
        publish the new round."""
        pk, current, mode, attempt = job_fields(job, self.attempt_field)
        job_logger = getattr(job, "logger", None)
        if not isinstance(job_logger, logging.Logger):
            job_logger = None
        run = self._restart
        if run is None:
            from .nats_adapter import start_run_sync as run
        result = run(
            self.servers, pk, time=self._now(), config=self.config, settings=self.start_settings,
            connect_options=self.connect_options, attempt=attempt, previous_status=previous_status or current,
            dispatch_mode=mode, actor=actor, reason=reason, job_logger=job_logger)
        line = summary(result)
        log.info("%s", line)
        if job_logger is not None:
            job_logger.info(line)
        return result.as_dict()

    # -- the end of a queue --------------------------------------------------

    def end_queue(self, job_id: int, job: Any = None, *, job_logger: Optional[logging.Logger] = None,
                  actor: Optional[str] = None, reason: Optional[str] = None) -> bool:
        """Tear down the finished job's queue (task consumer, task stream,
        dead-letter consumer; "not found" is success), then announce the
        job's status (terminal statuses only; ``deleted`` when ``job`` is None,
        the row being gone) with the run number stamped on its stream.
        Returns whether the queue is gone. Never raises; failures are logged
        as warnings (queue-janitor removes what is left once told)."""
        end = self._end
        if end is None:
            from .nats_adapter import end_queue_sync as end
        s = self.start_settings
        try:
            gone, run = end(self.servers, job_id, stream_name=fill(s.stream_pattern, job_id),
                            consumer_name=fill(self.consumer_pattern, job_id),
                            dlq_consumer_name=fill(s.dlq_consumer_pattern, job_id),
                            advisory_stream=s.advisory_stream, bucket=s.bucket,
                            connect_options=self.connect_options, job_logger=job_logger)
        except Exception as exc:
            log.warning("job %s: could not tear down the queue: %s", job_id, exc)
            gone, run = False, None
        if job is None:
            self.changed(SimpleNamespace(pk=job_id, status=self.deleted_status, dispatch_mode=None),
                         attempt=run, actor=actor, reason=reason)
        else:
            status = job_fields(job, self.attempt_field)[1].strip().lower()
            if status in self.config.terminal_statuses:
                kw: Dict[str, Any] = {} if run is None else {"attempt": run}
                self.changed(job, actor=actor, reason=reason, **kw)
            else:
                log.debug("job %s: queue torn down in status %s, which is not terminal: not announced", job_id, status)
        return gone

    # -- results -------------------------------------------------------------

    def result_is_current(self, job_id: int, reply_subject: Optional[str], *,
                          job_logger: Optional[logging.Logger] = None) -> bool:
        """False when the task behind ``reply_subject`` (its JetStream ack
        subject) came from an earlier round than the job's current one: it
        was queued before the current round's stream was created. Such a
        result must not count. True when it is current or when that cannot
        be told (no current stream, NATS unreachable, an unreadable subject):
        those count, as before. Logs why at INFO when False."""
        check = self._task_round
        if check is None:
            from .nats_adapter import task_round_sync as check
        try:
            why = check(self.servers, job_id, reply_subject or "",
                        stream_name=fill(self.start_settings.stream_pattern, job_id),
                        connect_options=self.connect_options)
        except Exception as exc:
            log.warning("job %s: could not tell the round of a result (%s); counting it", job_id, exc)
            return True
        if why is None:
            return True
        line = f"Result for job {job_id} not counted: it belongs to an earlier round ({why})"
        log.info("%s", line)
        if job_logger is not None:
            job_logger.info(line)
        return False


__all__ = ["DEFAULT_DELETED_STATUS", "JobEvents", "LOOKUP", "job_fields"]
