"""Which round a task came from, told by its acknowledgement subject.

A worker that pulled a task before a Start flushed the job's queue may post
its result afterwards: that result belongs to the earlier round and must not
count towards the new one (its image is in the new round again). JetStream
names each delivery's reply subject after the message:
``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp ns>.<pending>``
(with ``<domain>.<account hash>`` after ``$JS.ACK`` on newer servers). The
timestamp is when the task was stored. A task stored before the job's
current stream was created (both in the server's clock) came from an earlier
round; the Start path creates the new run's stream right after the flush.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

ACK_PREFIX = "$JS.ACK."


@dataclass(frozen=True)
class AckSubject:
    stream: str
    consumer: str
    delivered: int
    stream_seq: int
    consumer_seq: int
    #: When the task was stored in its stream, nanoseconds since the epoch (server clock).
    timestamp_ns: int


def parse_ack_subject(subject: Optional[str]) -> Optional[AckSubject]:
    """The parts of a JetStream acknowledgement subject, or None when
    ``subject`` is not one."""
    if not isinstance(subject, str) or not subject.startswith(ACK_PREFIX):
        return None
    tokens = subject.split(".")
    if len(tokens) == 9:
        offset = 2  # $JS.ACK.<stream>...
    elif len(tokens) >= 11:
        offset = 4  # $JS.ACK.<domain>.<account hash>.<stream>...
    else:
        return None
    try:
        stream, consumer = tokens[offset], tokens[offset + 1]
        delivered, sseq, cseq, ts = (int(t) for t in tokens[offset + 2:offset + 6])
    except (ValueError, IndexError):
        return None
    if not stream or not consumer:
        return None
    return AckSubject(stream, consumer, delivered, sseq, cseq, ts)


def from_earlier_round(ack: AckSubject, current_stream_created_ns: Optional[int]) -> bool:
    """Whether the task was stored before the job's current stream existed."""
    return current_stream_created_ns is not None and ack.timestamp_ns < current_stream_created_ns


async def task_round(nc: Any, job_id: int, reply_subject: str, *, stream_name: str,
                     timeout: float = 5.0) -> Optional[str]:
    """Why the task behind ``reply_subject`` is not of the job's current round
    (a short reason), or None when it is, or when that cannot be told (an
    unreadable subject, no current stream: such results count, as before).
    Needs nats-py."""
    from . import jsapi

    ack = parse_ack_subject(reply_subject)
    if ack is None or ack.stream != stream_name:
        # Not a task of this job's stream as configured (a renamed stream?):
        # nothing to tell, and dropping every result would stall the job.
        return None
    info = await jsapi.stream_info(nc, stream_name, timeout=timeout)
    if info is None or not from_earlier_round(ack, info.created_ns):
        return None
    return (f"its task was queued at {jsapi.format_time_ns(ack.timestamp_ns)}, before the current round's stream "
            f"{stream_name} was created at {jsapi.format_time_ns(info.created_ns or 0)}")
