"""The backend's per-job JetStream layout, with the attempt stamped in.

Plain dicts whose keys are nats-py's field names, so that
``nats.js.api.StreamConfig(**task_stream_config(42, 3))`` and
``nats.js.api.ConsumerConfig(**task_consumer_config(42, 3))`` work (durations
in seconds, as nats-py takes them).

The defaults are the job backend's own settings (Antenna,
``ami/ml/orchestration/nats_queue.py``, ``TaskQueueManager._ensure_stream``,
``TaskQueueManager._ensure_consumer`` and
``TaskQueueManager._setup_advisory_stream`` at commit 731cc2a2): a stream
``job_{id}`` on ``job.{id}.tasks`` kept 24 h (server defaults otherwise:
limits retention, file storage); a durable pull consumer with ack wait 300 s
(``NATS_TASK_TTR``), max deliver 2 (``NATS_MAX_DELIVER``), max ack pending
1000, deliver all, filtered on the job's subject; a shared stream
``advisories`` on ``$JS.EVENT.ADVISORY.>`` kept 1 h; and the job's
dead-letter consumer ``job-{id}-dlq`` on it, filtered on the max-deliveries
advisories of the job's task consumer. Adopting these changes nothing in the
backend's delivery semantics; the only addition is the ``metadata`` stamp,
and only when an attempt is given. A backend that creates its queue itself
needs none of this: it may add ``metadata=attempt_metadata(attempt)`` to its
own configs, or nothing at all (the service then fences by server time).

Stream and consumer metadata need nats-server 2.10 or later. An older server
does not keep it; the service then judges by the stream's creation time.
"""

from __future__ import annotations

from typing import Dict, Optional

from .events import check_attempt, check_job_id

#: The metadata key through which the service's fence reads the run number.
ATTEMPT_METADATA_KEY = "job_attempt"
#: Subject prefix of JetStream's max-deliveries advisories.
MAX_DELIVERIES_ADVISORY_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."
#: The shared advisory stream: its name, subjects and age as Antenna creates it.
ADVISORY_STREAM = "advisories"
ADVISORY_SUBJECTS = ("$JS.EVENT.ADVISORY.>",)
ADVISORY_MAX_AGE = 3600.0

#: Antenna's queue settings (commit 731cc2a2).
TASK_STREAM_MAX_AGE = 86400.0       # 24 h
TASK_ACK_WAIT = 300.0               # settings.NATS_TASK_TTR
TASK_MAX_DELIVER = 2                # NATS_MAX_DELIVER
TASK_MAX_ACK_PENDING = 1000         # NATS_MAX_ACK_PENDING

DEFAULT_STREAM_PATTERN = "job_{id}"
DEFAULT_SUBJECT_PATTERN = "job.{id}.tasks"
DEFAULT_CONSUMER_PATTERN = "job-{id}-consumer"
DEFAULT_DLQ_CONSUMER_PATTERN = "job-{id}-dlq"
DEFAULT_FLUSHED_SUBJECT = "job.queue.flushed.{id}"
#: The service's event stream (``--event-stream``).
DEFAULT_EVENT_STREAM = "JOB_EVENTS"
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
    attempt: Optional[int] = None,
    *,
    stream_pattern: str = DEFAULT_STREAM_PATTERN,
    subject_pattern: str = DEFAULT_SUBJECT_PATTERN,
    max_age: float = TASK_STREAM_MAX_AGE,
) -> Dict[str, object]:
    """The job's task stream as the backend creates it (name, its one
    subject, ``max_age`` 24 h; retention and storage left to the server's
    defaults, limits and file), plus ``metadata: {"job_attempt": ...}`` when
    ``attempt`` is given."""
    cfg: Dict[str, object] = {
        "name": fill(stream_pattern, job_id),
        "subjects": [fill(subject_pattern, job_id)],
        "max_age": float(max_age),
    }
    if attempt is not None:
        cfg["metadata"] = attempt_metadata(attempt)
    return cfg


def task_consumer_config(
    job_id: int,
    attempt: Optional[int] = None,
    *,
    consumer_pattern: str = DEFAULT_CONSUMER_PATTERN,
    subject_pattern: str = DEFAULT_SUBJECT_PATTERN,
    ack_wait: float = TASK_ACK_WAIT,
    max_deliver: int = TASK_MAX_DELIVER,
    max_ack_pending: int = TASK_MAX_ACK_PENDING,
) -> Dict[str, object]:
    """The job's durable pull consumer on its task stream, as the backend
    creates it: explicit ack, ack wait 300 s, max deliver 2, max ack pending
    1000, deliver all, filtered on the job's subject; attempt stamped when
    given."""
    cfg: Dict[str, object] = {
        "durable_name": fill(consumer_pattern, job_id),
        "ack_policy": "explicit",
        "ack_wait": float(ack_wait),
        "max_deliver": int(max_deliver),
        "deliver_policy": "all",
        "max_ack_pending": int(max_ack_pending),
        "filter_subject": fill(subject_pattern, job_id),
    }
    if attempt is not None:
        cfg["metadata"] = attempt_metadata(attempt)
    return cfg


def advisory_stream_config(
    *,
    name: str = ADVISORY_STREAM,
    max_age: float = ADVISORY_MAX_AGE,
) -> Dict[str, object]:
    """The shared advisory stream as the backend creates it: every
    JetStream advisory, kept 1 h. Shared by all jobs; never deleted."""
    return {"name": name, "subjects": list(ADVISORY_SUBJECTS), "max_age": float(max_age)}


def dlq_consumer_config(
    job_id: int,
    attempt: Optional[int] = None,
    *,
    dlq_consumer_pattern: str = DEFAULT_DLQ_CONSUMER_PATTERN,
    stream_pattern: str = DEFAULT_STREAM_PATTERN,
    consumer_pattern: str = DEFAULT_CONSUMER_PATTERN,
) -> Dict[str, object]:
    """The job's dead-letter consumer on the shared advisory stream, as the
    backend's ``js.pull_subscribe(filter, durable=..., stream="advisories")``
    creates it: durable, filtered on the max-deliveries advisories of the
    job's task consumer, server defaults otherwise; attempt stamped when given.

    It outlives the task stream (the advisory stream is shared and never
    deleted), so the stamp matters most here: it lets a restart flush remove
    the old run's consumer and never the new one's.
    """
    name = fill(dlq_consumer_pattern, job_id)
    cfg: Dict[str, object] = {
        "name": name,
        "durable_name": name,
        "filter_subject": (MAX_DELIVERIES_ADVISORY_PREFIX + fill(stream_pattern, job_id) + "."
                           + fill(consumer_pattern, job_id)),
    }
    if attempt is not None:
        cfg["metadata"] = attempt_metadata(attempt)
    return cfg
