"""The job backend's half of the queue-janitor contract.

Build and publish ``job.status.<status>`` CloudEvents, run the Start path's
flush handshake, and stamp the run's attempt into the task stream's metadata.
The core has no third-party dependency; ``nats_adapter`` wires nats-py and is
imported only by the code that uses it.
"""

from .events import (
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_STRUCTURED,
    DEFAULT_TERMINAL_STATUSES,
    MSG_ID_HEADER,
    RESTART_REQUESTED,
    EventConfig,
    StatusMessage,
    build_status_event,
    format_time,
    normalize_status,
    with_attempt,
)
from .handshake import BucketSettings, StartResult, StartSettings
from .jobs import JobEvents
from .publisher import StatusPublisher
from .records import choose_attempt
from .restart import FlushError, FlushTimeout, RestartSuperseded, parse_flushed, request_restart
from .rounds import AckSubject, parse_ack_subject
from .streams import (
    ATTEMPT_METADATA_KEY,
    advisory_stream_config,
    attempt_metadata,
    dlq_consumer_config,
    task_consumer_config,
    task_stream_config,
)
from .tracing import otel_trace_context

__version__ = "0.3.0"

__all__ = [
    "ATTEMPT_METADATA_KEY",
    "AckSubject",
    "BucketSettings",
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_STRUCTURED",
    "DEFAULT_TERMINAL_STATUSES",
    "EventConfig",
    "FlushError",
    "FlushTimeout",
    "JobEvents",
    "MSG_ID_HEADER",
    "RESTART_REQUESTED",
    "RestartSuperseded",
    "StartResult",
    "StartSettings",
    "StatusMessage",
    "StatusPublisher",
    "advisory_stream_config",
    "attempt_metadata",
    "build_status_event",
    "choose_attempt",
    "dlq_consumer_config",
    "format_time",
    "normalize_status",
    "otel_trace_context",
    "parse_ack_subject",
    "parse_flushed",
    "request_restart",
    "task_consumer_config",
    "task_stream_config",
    "with_attempt",
]
