"""The Start path's settings and result, without nats-py.

``StartSettings`` says how long a Start waits for queue-janitor and what its
fallback may touch; ``StartResult`` is what the Start path did, for the job's
log (``summary``). The path itself is ``start.start_run`` (nats-py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from .records import default_owner
from .streams import (
    ADVISORY_STREAM,
    DEFAULT_DLQ_CONSUMER_PATTERN,
    DEFAULT_EVENT_STREAM,
    DEFAULT_FLUSHED_SUBJECT,
    DEFAULT_STREAM_PATTERN,
    DEFAULT_SUBJECT_PATTERN,
    TASK_STREAM_MAX_AGE,
    fill,
)

PATH_SERVICE = "service"
PATH_FALLBACK = "fallback"

DEFAULT_BUCKET = "queue_janitor_jobs"
#: The service's --kv-ttl default: records of jobs not heard of for 30 days expire.
DEFAULT_KV_TTL = 30 * 24 * 3600.0
#: What the service writes as the bucket's description.
BUCKET_DESCRIPTION = "queue-janitor: per-job records (newest event, state, lease)"


@dataclass(frozen=True)
class BucketSettings:
    bucket: str = DEFAULT_BUCKET
    replicas: int = 1
    ttl: float = DEFAULT_KV_TTL

    @property
    def stream(self) -> str:
        return "KV_" + self.bucket

    def subject(self, job_id: int) -> str:
        return f"$KV.{self.bucket}.job.{job_id}"

    def stream_config(self) -> Dict[str, Any]:
        """The bucket's stream as the service's Go client creates it."""
        ttl_ns = int(round(self.ttl * 1e9)) if self.ttl > 0 else 0
        window = 120 * 10**9
        if 0 < ttl_ns < window:
            window = ttl_ns
        return {
            "name": self.stream,
            "description": BUCKET_DESCRIPTION,
            "subjects": [f"$KV.{self.bucket}.>"],
            "retention": "limits",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": ttl_ns,
            "max_msgs_per_subject": 1,
            "max_msg_size": -1,
            "discard": "new",
            "storage": "file",
            "num_replicas": self.replicas,
            "duplicate_window": window,
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "allow_direct": True,
        }


@dataclass(frozen=True)
class StartSettings:
    """How the Start path waits and what it may touch.

    handshake_wait
        Seconds to wait for queue-janitor's answer before flushing here.
    lease
        The service's ``--lease`` (default 12 s); must be equal to it.
    fallback_max_wait
        Longest wait, on the fallback path, for a live claim of the service
        on the job; then ``FlushTimeout``.
    request_timeout
        Bound on each JetStream request (the claim's authority bounds it
        further while flushing).
    bucket
        The service's bucket: ``--kv-bucket``, ``--kv-replicas`` and
        ``--kv-ttl`` (used only when the bucket has to be created here).
    event_stream
        The service's ``--event-stream``; only read for the server's clock.
    """

    handshake_wait: float = 5.0
    lease: float = 12.0
    fallback_max_wait: float = 30.0
    request_timeout: float = 5.0
    bucket: BucketSettings = BucketSettings()
    event_stream: str = DEFAULT_EVENT_STREAM
    flushed_subject: str = DEFAULT_FLUSHED_SUBJECT
    stream_pattern: str = DEFAULT_STREAM_PATTERN
    subject_pattern: str = DEFAULT_SUBJECT_PATTERN
    dlq_consumer_pattern: str = DEFAULT_DLQ_CONSUMER_PATTERN
    advisory_stream: str = ADVISORY_STREAM
    task_max_age: float = TASK_STREAM_MAX_AGE
    owner: str = field(default_factory=default_owner)

    def __post_init__(self) -> None:
        if not self.handshake_wait > 0:
            raise ValueError("handshake_wait must be positive (seconds)")
        if self.lease < 4:
            raise ValueError("lease must be at least 4 seconds and equal to the service's --lease")
        if self.fallback_max_wait < 0:
            raise ValueError("fallback_max_wait must not be negative")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be positive")
        for name in ("flushed_subject", "stream_pattern", "subject_pattern", "dlq_consumer_pattern"):
            fill(getattr(self, name), 1)  # raises for a pattern without exactly one {id}


@dataclass
class StartResult:
    """What the Start path did, for the job's log."""

    job_id: int
    attempt: int
    #: ``service`` (queue-janitor answered) or ``fallback`` (flushed here).
    path: str
    outcome: str
    event_id: str
    #: Why the fallback ran; None on the service path.
    reason: Optional[str] = None
    #: Seconds from the start of the handshake to its end.
    waited: float = 0.0
    deleted: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)
    messages_discarded: int = 0
    #: The new run's stream was created here, stamped with the attempt.
    stream_created: bool = False
    #: Messages found in the new stream right after its creation, purged.
    purged_after_create: int = 0
    #: The service's answer (``job.queue.flushed`` data) on the service path.
    answer: Optional[Dict[str, object]] = None

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def summary(result: StartResult) -> str:
    """One line for the job's log."""
    gone = ", ".join(result.deleted) if result.deleted else "nothing"
    head = (f"queue-janitor flushed job {result.job_id}'s queue ({result.outcome})" if result.path == PATH_SERVICE
            else f"job {result.job_id}: {result.reason}; flushed the leftover queue here instead ({result.outcome})")
    tail = f"; new run attempt {result.attempt}"
    if result.stream_created:
        tail += ", its stream created stamped"
    if result.purged_after_create:
        tail += f" (and purged of {result.purged_after_create} messages that came back)"
    return (f"{head}: deleted {gone}, {result.messages_discarded} messages discarded{tail} "
            f"(after {result.waited:.1f}s)")


__all__ = ["BucketSettings", "PATH_FALLBACK", "PATH_SERVICE", "StartResult", "StartSettings", "summary"]
