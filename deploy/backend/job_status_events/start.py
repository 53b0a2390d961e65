"""The Start path: flush the job's leftovers, stamp the new run, never stall.

``start_run`` is what a Start (or Retry) of a job does before the new round
of tasks is published:

1. **Number the run.** A backend without a run counter (Antenna) gets one
   from the NATS server's clock: attempt ``A = max(server_ms, known + 1)``,
   where ``server_ms`` is the ``ts`` of a raw ``STREAM.INFO`` answer and
   ``known`` the highest of the ``job_attempt`` stamp on the job's stream and
   the ``attempt``/``restart_attempt`` of the service's record.
2. **Ask queue-janitor.** Subscribe to ``job.queue.flushed.{id}``, publish
   ``restart_requested`` with ``attempt: A`` and wait ``handshake_wait``
   (5 s) for the answer.
3. **Or flush here.** With no answer in time, or when the request cannot be
   published (no event stream), the backend flushes the leftovers itself,
   as one more replica of the service: it waits out a young bucket
   (quarantine) and any live lease of the service on the job (taking the
   service's answer if it comes meanwhile), claims the job's lease with
   compare-and-set, checks that the bucket is still the one it judged, and
   deletes only that job's leftovers (stream purged then deleted, dead-letter
   consumer), each request bounded by the claim's authority (three quarters
   of the lease from the claim's sending).
4. **Stamp the new run.** The new run's stream is created here with the
   backend's own stream settings plus ``metadata: {"job_attempt": A}``
   (under the lease on the fallback path), checked empty (purged if a
   deleted stream's files came back), so the backend's own code finds and
   reuses it and a late terminal event of an earlier run is stale by number.
5. **Give the lease back** recording the restart as done, so that the
   service, reading the request later, answers ``already_done`` and
   deletes nothing.

The only failure left to the caller: a live claim of the service holds the
job and neither answers nor lets go within ``fallback_max_wait`` (30 s):
``FlushTimeout``. ``RestartSuperseded`` when the service answers ``stale``;
``FlushError`` when NATS cannot be used at all.

Needs nats-py.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import time as _time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import nats.errors
from nats.js.api import StreamConfig

from . import jsapi
from .bucket import Bucket, Conflict
from .events import RESTART_REQUESTED, EventConfig, StatusMessage, build_status_event, check_attempt, check_job_id
from .handshake import PATH_FALLBACK, PATH_SERVICE, StartResult, StartSettings
from .records import LeaseWatch, choose_attempt, claimed, holds, known_attempt, new_token, released
from .restart import OUTCOME_STALE, FlushError, FlushTimeout, RestartSuperseded, _await_answer, _pump
from .streams import fill, task_stream_config

log = logging.getLogger("job_status_events")

class _AuthorityEnded(Exception):
    """The claim's authority ran out (or a request timed out): claim again."""


class _BucketChanged(Exception):
    """The bucket was recreated under the claim: start over from the bucket."""


class _Answered(Exception):
    def __init__(self, data: Dict[str, object]) -> None:
        super().__init__("answered")
        self.data = data


async def _messages(sub: Any):
    async for msg in sub.messages:
        yield msg.headers, msg.data


class _Subscription:
    def __init__(self, sub: Any) -> None:
        self._sub = sub

    def __aiter__(self):
        return _messages(self._sub)

    async def aclose(self) -> None:
        try:
            await self._sub.unsubscribe()
        except (nats.errors.BadSubscriptionError, nats.errors.ConnectionClosedError,
                nats.errors.ConnectionDrainingError):
            pass


class _Start:
    def __init__(self, nc: Any, job_id: int, settings: StartSettings, config: EventConfig,
                 fields: Dict[str, Any], when: _dt.datetime, attempt: Optional[int],
                 clock: Callable[[], float], loggers: Sequence[logging.Logger]) -> None:
        self.nc = nc
        self.job_id = job_id
        self.s = settings
        self.config = config
        self.fields = fields
        self.when = when
        self.attempt = attempt
        self.clock = clock
        self.loggers = [log] + [lg for lg in loggers if lg is not None and lg is not log]
        self.stream = fill(settings.stream_pattern, job_id)
        self.dlq = fill(settings.dlq_consumer_pattern, job_id)
        self.subject = fill(settings.flushed_subject, job_id)
        self.bucket = Bucket(nc, settings.bucket, timeout=settings.request_timeout)
        self.msg: Optional[StatusMessage] = None
        self.sent: List[str] = []
        self.cut_ns: Optional[int] = None
        self.started = clock()
        self.inbox: "asyncio.Queue[tuple]" = asyncio.Queue()
        self.claimed = False
        self.logged_revisions: set = set()

    # -- logging -------------------------------------------------------------

    def info(self, text: str, *args: Any) -> None:
        for lg in self.loggers:
            lg.info(text, *args)

    # -- the answer ----------------------------------------------------------

    async def answer(self, timeout: float) -> Optional[Dict[str, object]]:
        """The service's answer to one of this Start's requests, waiting up
        to ``timeout``; None when none came (or none was sent)."""
        if not self.sent:
            if timeout > 0:
                await asyncio.sleep(timeout)
            return None
        return await _await_answer(self.inbox, self.sent, max(timeout, 0.0), self.job_id, self.subject, self.attempt)

    async def wait(self, seconds: float) -> None:
        """Sleep, but stop with ``_Answered`` when the service answers
        meanwhile (taken only before this Start claims the job itself)."""
        data = await self.answer(seconds)
        if data is not None and not self.claimed:
            raise _Answered(data)

    # -- run number and request ----------------------------------------------

    def build_request(self) -> StatusMessage:
        assert self.attempt is not None
        self.msg = build_status_event(self.job_id, RESTART_REQUESTED, time=self.when, attempt=self.attempt,
                                      config=self.config, **self.fields)
        return self.msg

    async def number_the_run(self, ts_ns: int, stream: Optional[jsapi.ResourceInfo],
                             record: Optional[Dict[str, Any]]) -> None:
        self.cut_ns = ts_ns
        if self.attempt is None:
            self.attempt = choose_attempt(ts_ns // 1_000_000, stream.stamp if stream else None, known_attempt(record))

    async def server_time(self, *infos: Optional[jsapi.ResourceInfo]) -> Optional[int]:
        for info in infos:
            if info is not None and info.ts_ns is not None:
                return info.ts_ns
        for name in (self.s.event_stream, self.s.advisory_stream):
            info = await jsapi.stream_info(self.nc, name, timeout=self.s.request_timeout)
            if info is not None and info.ts_ns is not None:
                return info.ts_ns
        return None

    # -- the whole path ------------------------------------------------------

    async def run(self) -> StartResult:
        stream = await jsapi.stream_info(self.nc, self.stream, timeout=self.s.request_timeout)
        binfo = await self.bucket.info()
        record = (await self.bucket.get(self.job_id))[0] if binfo is not None else None
        ts = await self.server_time(stream, binfo)
        if ts is None:
            return await self.fallback("no event stream, no bucket and no job stream on this NATS server "
                                       "(has queue-janitor ever run here?)")
        await self.number_the_run(ts, stream, record)
        msg = self.build_request()
        self.sent.append(msg.event_id)
        try:
            js = self.nc.jetstream()
            await js.publish(msg.subject, msg.body, timeout=self.s.request_timeout, headers=dict(msg.headers))
        except Exception as exc:  # no event stream ("no response from stream"), a timeout...
            return await self.fallback(f"restart_requested could not be published ({exc})")
        data = await self.answer(self.s.handshake_wait)
        if data is not None:
            return await self.answered(data)
        return await self.fallback(f"queue-janitor did not answer within {self.s.handshake_wait:g}s")

    def result(self, path: str, outcome: str, **kw: Any) -> StartResult:
        assert self.attempt is not None and self.msg is not None
        return StartResult(job_id=self.job_id, attempt=self.attempt, path=path, outcome=outcome,
                           event_id=self.msg.event_id, waited=self.clock() - self.started, **kw)

    async def answered(self, data: Dict[str, object]) -> StartResult:
        outcome = str(data.get("outcome"))
        if outcome == OUTCOME_STALE:
            raise RestartSuperseded(
                f"job {self.job_id}: queue-janitor answered restart_requested (attempt {self.attempt}) with "
                f"'stale': it has already seen a newer event of this job (another Start?); do not publish "
                f"the new round", job_id=self.job_id, attempt=self.attempt, event_ids=self.sent)
        created, purged = await self.create_run_stream(None)
        return self.result(PATH_SERVICE, outcome, deleted=list(data.get("deleted") or []),  # type: ignore[arg-type]
                           kept=list(data.get("kept") or []),  # type: ignore[arg-type]
                           messages_discarded=int(data.get("messages_discarded") or 0),  # type: ignore[arg-type]
                           stream_created=created, purged_after_create=purged, answer=data)

    # -- requests bounded by the claim's authority ---------------------------

    def bound(self, authority_end: Optional[float]) -> float:
        if authority_end is None:
            return self.s.request_timeout
        left = authority_end - self.clock()
        if left <= 0.05:
            raise _AuthorityEnded("the claim's authority ended before the next request")
        return min(self.s.request_timeout, left)

    async def create_run_stream(self, authority_end: Optional[float]) -> Tuple[bool, int]:
        """Create the new run's stream, stamped; ``(created here, messages
        purged right after)``. A failure outside a claim is logged, not
        raised: the backend then creates the stream itself, unstamped."""
        assert self.attempt is not None
        cfg = StreamConfig(**task_stream_config(self.job_id, self.attempt, stream_pattern=self.s.stream_pattern,
                                                subject_pattern=self.s.subject_pattern,
                                                max_age=self.s.task_max_age)).as_dict()
        try:
            try:
                await jsapi.create_stream(self.nc, cfg, timeout=self.bound(authority_end))
                created = True
            except jsapi.ApiError as exc:
                if exc.err_code != jsapi.ERR_STREAM_NAME_IN_USE:
                    raise
                created = False
            info = await jsapi.stream_info(self.nc, self.stream, timeout=self.bound(authority_end))
            if info is None:
                return False, 0
            if not created:
                self.info("job %d: stream %s already exists (stamp %s); the new run uses it as it is",
                          self.job_id, self.stream, info.stamp)
                return False, 0
            purged = 0
            if info.messages > 0 and info.stamp == self.attempt:
                purged = await jsapi.purge_stream(self.nc, self.stream, timeout=self.bound(authority_end)) or 0
                self.info("job %d: the new stream %s held %d messages right after it was created (a deleted "
                          "stream's files came back); purged them before the new round", self.job_id, self.stream,
                          purged)
            return True, purged
        except (_AuthorityEnded, asyncio.CancelledError):
            raise
        except Exception as exc:
            if authority_end is not None:
                raise
            log.warning("job %d: could not create the new run's stream %s stamped with attempt %d: %s; the "
                        "backend will create it unstamped", self.job_id, self.stream, self.attempt, exc)
            return False, 0

    # -- the fallback --------------------------------------------------------

    def judge(self, info: jsapi.ResourceInfo) -> str:
        """Why a resource must be kept ("" when it is a leftover to remove):
        the fence of a restart to attempt A, as the service applies it."""
        assert self.attempt is not None
        stamp = info.stamp
        if stamp is not None:
            return "" if stamp < self.attempt else f"stamped with attempt {stamp}, not before {self.attempt}"
        if info.created_ns is not None and self.cut_ns is not None and info.created_ns >= self.cut_ns:
            return "created after the restart request"
        return ""

    async def flush(self, authority_end: float) -> Dict[str, Any]:
        out: Dict[str, Any] = {"deleted": [], "kept": [], "messages_discarded": 0}
        info = await jsapi.stream_info(self.nc, self.stream, timeout=self.bound(authority_end))
        if info is not None:
            why = self.judge(info)
            if why:
                out["kept"].append(f"stream {self.stream} ({why})")
            else:
                # Purge first: nats-server 2.15.2 can bring a just-deleted
                # stream's messages back when it is created again.
                purged = await jsapi.purge_stream(self.nc, self.stream, timeout=self.bound(authority_end))
                out["messages_discarded"] += purged or 0
                if await jsapi.delete_stream(self.nc, self.stream, timeout=self.bound(authority_end)):
                    out["deleted"].append(f"stream {self.stream}")
        adv = self.s.advisory_stream
        dlq = await jsapi.consumer_info(self.nc, adv, self.dlq, timeout=self.bound(authority_end))
        if dlq is not None:
            why = self.judge(dlq)
            if why:
                out["kept"].append(f"consumer {adv}/{self.dlq} ({why})")
            elif await jsapi.delete_consumer(self.nc, adv, self.dlq, timeout=self.bound(authority_end)):
                out["deleted"].append(f"consumer {adv}/{self.dlq}")
        return out

    async def quarantine(self) -> jsapi.ResourceInfo:
        """The bucket's info once it is at least one lease old (the service
        waits as long after finding its bucket lost)."""
        lease_ns = int(self.s.lease * 1e9)
        while True:
            binfo, created = await self.bucket.ensure()
            if created:
                self.info("job %d: created queue-janitor's bucket %s as the service would", self.job_id,
                          self.s.bucket.bucket)
            if binfo.ts_ns is None or binfo.created_ns is None:
                raise FlushError(f"job {self.job_id}: the NATS server reports no time with stream info; the "
                                 f"fallback flush needs nats-server 2.10 or later", job_id=self.job_id,
                                 attempt=self.attempt, event_ids=self.sent)
            age = binfo.ts_ns - binfo.created_ns
            if age >= lease_ns:
                return binfo
            wait = (lease_ns - age) / 1e9
            self.info("job %d: queue-janitor's bucket is %.1fs old; waiting %.1fs (one lease) before acting",
                      self.job_id, age / 1e9, wait)
            await self.wait(wait)

    async def fallback(self, reason: str) -> StartResult:
        try:
            return await self._fallback(reason)
        except _Answered as got:
            return await self.answered(got.data)

    async def _fallback(self, reason: str) -> StartResult:
        self.info("job %d: %s; flushing its leftover queue here", self.job_id, reason)
        fb_started = self.clock()
        token = new_token()
        watch = LeaseWatch(token, self.s.lease, self.clock)
        give_up = fb_started + self.s.fallback_max_wait + 4 * self.s.lease
        while True:  # from the bucket (steps 1 and 2)
            binfo = await self.quarantine()
            if self.attempt is None:
                stream = await jsapi.stream_info(self.nc, self.stream, timeout=self.s.request_timeout)
                record, _ = await self.bucket.get(self.job_id)
                assert binfo.ts_ns is not None
                await self.number_the_run(binfo.ts_ns, stream, record)
            if self.msg is None:
                self.build_request()  # never published: its id names this restart in the record
            if self.cut_ns is None:
                self.cut_ns = binfo.ts_ns
            created0 = binfo.created_ns
            try:
                while True:  # from the lease (step 3)
                    if self.clock() > give_up:
                        raise FlushTimeout(
                            f"job {self.job_id}: could not complete the flush of the leftover queue within "
                            f"{self.clock() - fb_started:.0f}s (NATS requests kept failing or timing out); "
                            f"do not publish the new round", job_id=self.job_id, attempt=self.attempt,
                            event_ids=self.sent)
                    record, rev = await self.bucket.get(self.job_id)
                    live = watch.live_for(record, rev)
                    if live > 0:
                        waited = self.clock() - fb_started
                        if waited >= self.s.fallback_max_wait:
                            owner = (record or {}).get("lease", {}).get("owner")
                            raise FlushTimeout(
                                f"job {self.job_id}: queue-janitor ({owner}) holds this job's lease and has neither "
                                f"answered the restart request nor let the lease go for {waited:.0f}s; do not "
                                f"publish the new round. Check the service's logs for job {self.job_id} "
                                f"(event ids {', '.join(self.sent) or 'none published'})",
                                job_id=self.job_id, attempt=self.attempt, event_ids=self.sent)
                        if rev not in self.logged_revisions:
                            self.logged_revisions.add(rev)
                            owner = (record or {}).get("lease", {}).get("owner")
                            self.info("job %d: %s holds the job's lease for up to %.1fs more; waiting for it to end "
                                      "(or for the service's answer)", self.job_id, owner, live)
                        await self.wait(min(live, 1.0, max(0.05, fb_started + self.s.fallback_max_wait - self.clock())))
                        continue
                    # Claim (step 3): compare-and-set over the revision read.
                    sent_at = self.clock()
                    try:
                        await self.bucket.put(self.job_id, claimed(record, owner=self.s.owner, token=token,
                                                                   lease_seconds=self.s.lease), rev)
                    except Conflict:
                        continue
                    self.claimed = True
                    authority_end = sent_at + 0.75 * self.s.lease
                    try:
                        # Post-claim check (step 4): still the bucket judged, still old enough.
                        b2 = await self.bucket.info(timeout=self.bound(authority_end))
                        if (b2 is None or b2.created_ns != created0 or b2.ts_ns is None
                                or b2.ts_ns - b2.created_ns < int(self.s.lease * 1e9)):
                            await self.release(token, done=False)
                            raise _BucketChanged()
                        removal = await self.flush(authority_end)  # steps 5 and 6
                        created, purged = await self.create_run_stream(authority_end)  # step 7
                    except (_AuthorityEnded, nats.errors.TimeoutError, asyncio.TimeoutError) as exc:
                        self.info("job %d: the claim's authority ran out (%s); claiming again", self.job_id, exc)
                        continue
                    await self.release(token, done=True)  # step 8
                    outcome = ("removed" if removal["deleted"] else
                               "kept_later_run" if removal["kept"] else "nothing_to_remove")
                    return self.result(PATH_FALLBACK, outcome, reason=reason, deleted=removal["deleted"],
                                       kept=removal["kept"], messages_discarded=removal["messages_discarded"],
                                       stream_created=created, purged_after_create=purged)
            except _BucketChanged:
                self.claimed = False
                self.info("job %d: queue-janitor's bucket changed under the claim; starting over", self.job_id)
                continue

    async def release(self, token: str, *, done: bool) -> None:
        """Give the lease back; with ``done``, record the restart as carried
        out. A record changed meanwhile (the service recording a newer event
        keeps the lease with its holder) is read again and written again."""
        assert self.attempt is not None and self.msg is not None
        record, cur = await self.bucket.get(self.job_id)
        for _ in range(8):
            if not holds(record, token):
                if done:
                    log.warning("job %d: the lease was taken over before it could be given back; the flush and "
                                "the new stream stand, but the restart is not recorded as done", self.job_id)
                return
            if done:
                value = released(record or {}, attempt=self.attempt, event_id=self.msg.event_id)
            else:
                value = dict(record or {})
                value.pop("lease", None)
            try:
                await self.bucket.put(self.job_id, value, cur)
                return
            except Conflict:
                record, cur = await self.bucket.get(self.job_id)
        log.warning("job %d: the record kept changing; the lease was not given back (it expires in %gs)",
                    self.job_id, self.s.lease)


async def start_run(
    nc: Any,
    job_id: int,
    *,
    time: _dt.datetime,
    config: EventConfig = EventConfig(),
    settings: StartSettings = StartSettings(),
    attempt: Optional[int] = None,
    previous_status: Optional[str] = None,
    dispatch_mode: Optional[str] = None,
    reason: Optional[str] = None,
    actor: Optional[str] = None,
    job_logger: Optional[logging.Logger] = None,
    clock: Callable[[], float] = _time.monotonic,
) -> StartResult:
    """Flush the job's leftovers and stamp the new run, through queue-janitor
    or, when it does not answer in time, here (see the module's text).

    ``attempt`` is the backend's own run number when it has one; None (Antenna)
    numbers the run from the server's clock. ``time`` is the moment of the
    Start (aware, or naive in the configuration's zone). ``job_logger`` also
    gets the path's INFO lines. Returns a ``StartResult``; raises
    ``FlushTimeout`` (a live claim of the service holds the job and neither
    answers nor lets go within ``fallback_max_wait``), ``RestartSuperseded``
    (the service answered ``stale``) or ``FlushError`` (NATS unusable)."""
    job_id = check_job_id(job_id)
    attempt = check_attempt(attempt)
    fields = {"previous_status": previous_status, "dispatch_mode": dispatch_mode, "reason": reason, "actor": actor}
    # A bad argument fails here, before anything touches NATS.
    build_status_event(job_id, RESTART_REQUESTED, time=time, attempt=attempt if attempt is not None else 0,
                       config=config, **fields)
    run = _Start(nc, job_id, settings, config, fields, time, attempt, clock, [job_logger] if job_logger else [])
    sub = await nc.subscribe(run.subject)
    await nc.flush()  # the server has the interest before the request goes out
    wrapped = _Subscription(sub)
    reader = asyncio.ensure_future(_pump(wrapped, run.inbox))
    try:
        return await run.run()
    except (FlushError, asyncio.CancelledError):
        raise
    except (nats.errors.Error, jsapi.ApiError, OSError, asyncio.TimeoutError) as exc:
        raise FlushError(f"job {job_id}: the Start path could not use NATS: {exc!r}; do not publish the new round",
                         job_id=job_id, attempt=run.attempt, event_ids=run.sent) from exc
    finally:
        try:
            await wrapped.aclose()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


__all__ = ["start_run"]
