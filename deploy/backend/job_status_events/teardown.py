"""The end of a job's queue, as the backend tears it down.

``teardown`` replaces a backend's own deletion of a finished job's queue
(Antenna: ``TaskQueueManager.cleanup_job_resources``) with the same three
deletions (task consumer, task stream, dead-letter consumer) in which "not
found" is success: queue-janitor, or an earlier cleanup, may have removed
them first, and that is not an error for the job's log. Before deleting, it
reads the run number stamped on the stream (``job_attempt``) so that the
terminal event announced afterwards carries it.

Needs nats-py.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple

from . import jsapi
from .bucket import Bucket, BucketSettings

log = logging.getLogger("job_status_events")


async def read_run_attempt(nc: Any, job_id: int, *, stream_name: str, bucket: BucketSettings,
                           timeout: float = 5.0) -> Optional[int]:
    """The run the job's queue belongs to: the ``job_attempt`` stamp of its
    stream, else the ``restart_attempt`` of the service's record, else None."""
    info = await jsapi.stream_info(nc, stream_name, timeout=timeout)
    if info is not None and info.stamp is not None:
        return info.stamp
    record, _ = await Bucket(nc, bucket, timeout=timeout).get(job_id)
    value = (record or {}).get("restart_attempt")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _seq(info: Dict[str, Any], key: str) -> Any:
    part = info.get(key)
    return part.get("consumer_seq", "?") if isinstance(part, dict) else "?"


def consumer_stats(raw: Dict[str, Any]) -> str:
    """A consumer's counters, as Antenna's forensic line prints them."""
    return (f"delivered={_seq(raw, 'delivered')} ack_floor={_seq(raw, 'ack_floor')} "
            f"num_pending={raw.get('num_pending', '?')} num_ack_pending={raw.get('num_ack_pending', '?')} "
            f"num_redelivered={raw.get('num_redelivered', '?')}")


async def teardown(nc: Any, job_id: int, *, stream_name: str, consumer_name: str, dlq_consumer_name: str,
                   advisory_stream: str, bucket: BucketSettings, loggers: Sequence[logging.Logger] = (),
                   timeout: float = 5.0) -> Tuple[bool, Optional[int]]:
    """Delete the job's task consumer, task stream and dead-letter consumer,
    "not found" being success; ``(all gone, the run's attempt)``. Failures
    are logged as warnings (queue-janitor removes what is left once told the
    job ended), never raised."""
    out = [log] + [lg for lg in loggers if lg is not None and lg is not log]

    def say(level: int, text: str) -> None:
        for lg in out:
            lg.log(level, text)

    attempt: Optional[int] = None
    try:
        attempt = await read_run_attempt(nc, job_id, stream_name=stream_name, bucket=bucket, timeout=timeout)
        info = await jsapi.consumer_info(nc, stream_name, consumer_name, timeout=timeout)
        if info is not None:
            say(logging.INFO, f"Finalizing NATS consumer {consumer_name} before deletion ({consumer_stats(info.raw)})")
    except Exception as exc:  # forensic only
        log.debug("job %d: could not read the queue before deleting it: %s", job_id, exc)

    ok = True
    gone = []
    steps = (
        ("consumer", consumer_name, lambda: jsapi.delete_consumer(nc, stream_name, consumer_name, timeout=timeout)),
        ("stream", stream_name, lambda: jsapi.delete_stream(nc, stream_name, timeout=timeout)),
        ("DLQ consumer", dlq_consumer_name,
         lambda: jsapi.delete_consumer(nc, advisory_stream, dlq_consumer_name, timeout=timeout)),
    )
    for what, name, delete in steps:
        try:
            existed = await delete()
        except Exception as exc:
            ok = False
            say(logging.WARNING, f"Could not delete NATS {what} {name} for job '{job_id}': {exc}; "
                                 f"queue-janitor removes it once told the job ended")
            continue
        if existed:
            say(logging.INFO, f"Deleted NATS {what} {name} for job '{job_id}'")
        else:
            gone.append(f"{what} {name}")
    if gone:
        say(logging.INFO, f"NATS {', '.join(gone)} of job '{job_id}' already removed (by queue-janitor or an "
                          f"earlier cleanup)")
    return ok, attempt
