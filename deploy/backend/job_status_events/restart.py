"""The Start path: flush leftovers before publishing a new round.

Contract section 3: subscribe to ``job.queue.flushed.{id}``, publish
``restart_requested`` with the new attempt, wait for the flushed event that
answers it, and only then reset the counters and publish the new round.

The transport is injected: ``subscribe(subject)`` is awaited and must have
registered the subscription when it returns; it returns an object that is an
async iterator of ``(headers, body)`` pairs (headers a mapping or None, body
bytes) and has an ``async aclose()`` that unsubscribes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as _dt
import json
import logging
from typing import AsyncIterator, Awaitable, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

from .events import RESTART_REQUESTED, check_attempt, check_job_id
from .publisher import StatusPublisher
from .streams import DEFAULT_FLUSHED_SUBJECT, fill

log = logging.getLogger("job_status_events")

#: The outcome of a flush that kept resources of a later run (see README).
OUTCOME_KEPT_LATER_RUN = "kept_later_run"

#: The outcome of a restart request that a newer event of the job superseded.
OUTCOME_STALE = "stale"


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[Tuple[Optional[Mapping[str, str]], bytes]]: ...

    async def aclose(self) -> None: ...


Subscribe = Callable[[str], Awaitable[Subscription]]


class FlushError(RuntimeError):
    """The restart handshake did not get its answer: do NOT publish the new round."""

    def __init__(self, message: str, *, job_id: int, attempt: Optional[int], event_ids: List[str]) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.attempt = attempt
        self.event_ids = list(event_ids)


class FlushTimeout(FlushError):
    """No ``job.queue.flushed`` answer arrived after every try."""


class RestartSuperseded(FlushError):
    """queue-janitor answered ``stale``: a newer event of the job superseded this request."""


def parse_flushed(headers: Optional[Mapping[str, str]], body: bytes) -> Optional[Dict[str, object]]:
    """The data of a ``job.queue.flushed`` CloudEvent, or None if unreadable.

    The service emits structured mode; binary mode is read too, for a relay
    that converts.
    """
    h = {str(k).lower(): v for k, v in (headers or {}).items()}
    try:
        doc = json.loads(body)
    except (ValueError, TypeError):
        return None
    structured = str(h.get("content-type", "")).lower().startswith("application/cloudevents+json")
    if not structured and "ce-specversion" in h:
        return doc if isinstance(doc, dict) else None
    if not isinstance(doc, dict):
        return None
    data = doc.get("data")
    if data is None and isinstance(doc.get("data_base64"), str):
        try:
            data = json.loads(base64.b64decode(doc["data_base64"], validate=True))
        except (ValueError, binascii.Error):
            return None
    return data if isinstance(data, dict) else None


async def _pump(sub: Subscription, inbox: "asyncio.Queue[tuple]") -> None:
    """Move every received message to inbox; one task reads the subscription
    for the whole handshake, so no per-try cancellation can lose a message."""
    try:
        async for headers, body in sub:
            inbox.put_nowait(("msg", headers, body))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        inbox.put_nowait(("error", exc, None))
        return
    inbox.put_nowait(("end", None, None))


def _run_label(attempt: Optional[int]) -> str:
    return f"attempt {attempt}" if attempt is not None else "no attempt"


async def _await_answer(
    inbox: "asyncio.Queue[tuple]", sent: List[str], timeout: float, job_id: int, subject: str,
    attempt: Optional[int],
) -> Optional[Dict[str, object]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            kind, a, b = await asyncio.wait_for(inbox.get(), remaining)
        except asyncio.TimeoutError:
            return None
        if kind == "end":
            raise FlushError(f"job {job_id}: the subscription to {subject} ended before the answer to "
                             f"restart_requested ({_run_label(attempt)}) arrived (connection closed?); do not publish the new round",
                             job_id=job_id, attempt=attempt, event_ids=sent)
        if kind == "error":
            raise FlushError(f"job {job_id}: reading {subject} failed: {a}; do not publish the new round",
                             job_id=job_id, attempt=attempt, event_ids=sent) from a
        data = parse_flushed(a, b)
        if data is None:
            log.warning("job %d: ignoring an unreadable message on %s", job_id, subject)
            continue
        cause = data.get("cause_event_id")
        if cause not in sent:
            # Another request's answer (another Start of this job, an earlier
            # handshake's late or repeated answer): not ours.
            log.debug("job %d: ignoring a flushed event caused by %r, not by this Start (%s)", job_id, cause, sent)
            continue
        answered = data.get("attempt")
        if (attempt is not None and isinstance(answered, int) and not isinstance(answered, bool)
                and answered < attempt):
            log.debug("job %d: ignoring a flushed event for attempt %d, older than %d", job_id, answered, attempt)
            continue
        return data


async def request_restart(
    publisher: StatusPublisher,
    subscribe: Subscribe,
    job_id: int,
    attempt: Optional[int],
    *,
    time: _dt.datetime,
    previous_status: Optional[str] = None,
    dispatch_mode: Optional[str] = None,
    reason: Optional[str] = None,
    actor: Optional[str] = None,
    timeout: float = 30.0,
    tries: int = 3,
    flushed_subject: str = DEFAULT_FLUSHED_SUBJECT,
) -> Dict[str, object]:
    """Ask queue-janitor to flush the job's leftovers and wait until it has.

    ``attempt`` is the run that is about to start (one more than the last
    run's), or None for a backend without an attempt counter (Antenna
    today): the service then orders the request by the time the NATS server
    stored it, and a later request of the same job is a new restart. ``time``
    is the moment of this request (aware, or naive in the configuration's
    zone); every try re-uses it, so that all tries describe the same
    transition.

    Returns the data of the answering ``job.queue.flushed`` event (``outcome``,
    ``deleted``, ``messages_discarded``, ``kept``, ...), for the caller to
    log. Only after it returns may the caller publish the new round.

    Each try publishes a new ``restart_requested`` event (a new id) for the
    same attempt and time, and waits ``timeout`` seconds. The service answers
    a repeated request for an attempt it has flushed with outcome
    ``already_done``, without deleting anything; without an attempt, a
    repeated try is flushed again, which is harmless since nothing of the new
    round exists yet. An answer to any of this call's tries is accepted
    (matched by ``cause_event_id``); answers to other requests, and answers
    for an older attempt, are ignored. Raises ``FlushTimeout`` when no try is
    answered, ``FlushError`` when the subscription ends first or a request
    cannot be published (no ``JOB_EVENTS`` stream, NATS unreachable), and
    ``RestartSuperseded`` on the answer ``stale``; the subscription is always
    closed.
    """
    job_id = check_job_id(job_id)
    attempt = check_attempt(attempt)
    if tries < 1:
        raise ValueError("tries must be at least 1")
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    subject = fill(flushed_subject, job_id)
    # Build the first event before subscribing, so that a bad argument fails
    # without touching NATS.
    msg = publisher.build(job_id, RESTART_REQUESTED, time=time, attempt=attempt, previous_status=previous_status,
                          dispatch_mode=dispatch_mode, reason=reason, actor=actor)
    sub = await subscribe(subject)
    inbox: "asyncio.Queue[tuple]" = asyncio.Queue()
    reader = asyncio.ensure_future(_pump(sub, inbox))
    sent: List[str] = []
    try:
        for n in range(1, tries + 1):
            if n > 1:
                msg = publisher.build(job_id, RESTART_REQUESTED, time=time, attempt=attempt,
                                      previous_status=previous_status, dispatch_mode=dispatch_mode,
                                      reason=reason, actor=actor)
            sent.append(msg.event_id)
            try:
                await publisher.send(msg)
            except Exception as exc:
                raise FlushError(
                    f"job {job_id}: could not publish restart_requested ({_run_label(attempt)}): {exc!r}; "
                    f"do not publish the new round. Check that NATS is reachable and that the event stream "
                    f"(JOB_EVENTS, subjects job.status.*) exists: queue-janitor creates it when it starts",
                    job_id=job_id, attempt=attempt, event_ids=sent) from exc
            data = await _await_answer(inbox, sent, timeout, job_id, subject, attempt)
            if data is not None:
                outcome = data.get("outcome")
                if outcome == OUTCOME_STALE:
                    raise RestartSuperseded(
                        f"job {job_id}: queue-janitor answered restart_requested ({_run_label(attempt)}) with "
                        f"'stale': it has already seen a newer event of this job, so this request is "
                        f"superseded; do not publish the new round",
                        job_id=job_id, attempt=attempt, event_ids=sent)
                if outcome == OUTCOME_KEPT_LATER_RUN:
                    log.warning("job %d %s: queue-janitor kept resources of a later run: %s",
                                job_id, _run_label(attempt), data.get("kept"))
                log.info("job %d %s: flushed (%s), %s messages discarded, deleted %s",
                         job_id, _run_label(attempt), outcome, data.get("messages_discarded"), data.get("deleted"))
                return data
            if n < tries:
                log.warning("job %d %s: no answer on %s within %gs (try %d of %d); asking again",
                            job_id, _run_label(attempt), subject, timeout, n, tries)
        raise FlushTimeout(
            f"job {job_id}: no {subject} answer to restart_requested ({_run_label(attempt)}) after {tries} "
            f"tries of {timeout:g}s (event ids {', '.join(sent)}); do not publish the new round. "
            f"Check that queue-janitor is running and reading its event stream "
            f"(nats consumer info JOB_EVENTS queue-janitor), that it publishes on the same NATS account "
            f"and subject pattern ({flushed_subject}), and its log lines for these event ids.",
            job_id=job_id, attempt=attempt, event_ids=sent)
    finally:
        # Unsubscribe first, which ends the reader's iteration cleanly; then
        # make sure the reader is gone whatever happened.
        try:
            await sub.aclose()
        except Exception as exc:  # never mask the outcome of the handshake
            log.warning("job %d: closing the subscription to %s failed: %s", job_id, subject, exc)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
