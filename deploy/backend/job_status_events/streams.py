"""The backend's per-job JetStream layout, with the attempt stamped in.

Plain dicts whose keys are nats-py's field names, so that
``nats.js.api.StreamConfig(**task_stream_config(42, 3))`` and
``nats.js.api.ConsumerConfig(**task_consumer_config(42, 3))`` work (durations
in seconds, as nats-py takes them). The layout mirrors the service's
``queue/provision.go``; keep your own limits if they differ, but keep the
``metadata``.

Stream and consumer metadata need nats-server 2.10 or later. An older server
does not keep it: the service then falls back to its time fence (a stream
created after the event's ``time``, less the clock-skew allowance, is kept),
which is safe but less exact.
"""

from __future__ import annotations

from typing import Dict, Optional

from .events import check_attempt, check_job_id

#: The metadata key through which the service's fence reads the run number.
ATTEMPT_METADATA_KEY = "job_attempt"
#: Subject prefix of JetStream's max-deliveries advisories.
MAX_DELIVERIES_ADVISORY_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."

DEFAULT_STREAM_PATTERN = "job_{id}"
DEFAULT_SUBJECT_PATTERN = "job.{id}.tasks"
DEFAULT_CONSUMER_PATTERN = "job-{id}-consumer"
DEFAULT_DLQ_CONSUMER_PATTERN = "job-{id}-dlq"
DEFAULT_FLUSHED_SUBJECT = "job.queue.flushed.{id}"
DEFAULT_CLEANED_SUBJECT = "job.queue.cleaned.{id}"


def fill(pattern: str, job_id: int) -> str:
    """``pattern`` with its single ``{id}`` replaced by the job id."""
    if pattern.count("{id}") != 1:
        raise ValueError(f"pattern {pattern!r} must contain {{id}} exactly once")
    return pattern.replace("{id}", str(check_job_id(job_id)))


def attempt_metadata(attempt: int) -> Dict[str, str]:
    """``{"job_attempt": "<attempt>"}`` for a stream's or consumer's metadata."""
    a = check_attempt(attempt)
    if a is None:
        raise ValueError("attempt is required to stamp metadata")
    return {ATTEMPT_METADATA_KEY: str(a)}


def task_stream_config(
    job_id: int,
    attempt: Optional[int],
    *,
    stream_pattern: str = DEFAULT_STREAM_PATTERN,
    subject_pattern: str = DEFAULT_SUBJECT_PATTERN,
    max_age: float = 24 * 3600.0,
) -> Dict[str, object]:
    """The job's task stream: limits retention, file storage, 24 h max age,
    the job's task subject only, and ``metadata: {"job_attempt": str(attempt)}``
    (omitted when ``attempt`` is None)."""
    cfg: Dict[str, object] = {
        "name": fill(stream_pattern, job_id),
        "subjects": [fill(subject_pattern, job_id)],
        "retention": "limits",
        "storage": "file",
        "max_age": float(max_age),
    }
    if attempt is not None:
        cfg["metadata"] = attempt_metadata(attempt)
    return cfg


def task_consumer_config(
    job_id: int,
    attempt: Optional[int],
    *,
    consumer_pattern: str = DEFAULT_CONSUMER_PATTERN,
    ack_wait: float = 30.0,
    max_deliver: int = 5,
) -> Dict[str, object]:
    """The job's durable pull consumer on its task stream, attempt stamped."""
    cfg: Dict[str, object] = {
        "durable_name": fill(consumer_pattern, job_id),
        "ack_policy": "explicit",
        "ack_wait": float(ack_wait),
        "max_deliver": max_deliver,
    }
    if attempt is not None:
        cfg["metadata"] = attempt_metadata(attempt)
    return cfg


def dlq_consumer_config(
    job_id: int,
    attempt: Optional[int],
    *,
    dlq_consumer_pattern: str = DEFAULT_DLQ_CONSUMER_PATTERN,
    stream_pattern: str = DEFAULT_STREAM_PATTERN,
) -> Dict[str, object]:
    """The job's dead-letter consumer on the shared ``advisories`` stream.

    It outlives the task stream (the advisory stream is shared and never
    deleted), so the stamp matters most here: it lets a restart flush remove
    the old run's consumer and never the new one's.
    """
    cfg: Dict[str, object] = {
        "durable_name": fill(dlq_consumer_pattern, job_id),
        "ack_policy": "explicit",
        "filter_subject": MAX_DELIVERIES_ADVISORY_PREFIX + fill(stream_pattern, job_id) + ".*",
    }
    if attempt is not None:
        cfg["metadata"] = attempt_metadata(attempt)
    return cfg
