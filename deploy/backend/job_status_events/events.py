"""Building job.status.<status> CloudEvents, as queue-janitor reads them.

Pure functions: nothing here touches the network or imports a NATS client.
The reference for every field is the service's ``events/status.go`` and
``events/decode.go`` (contract section 2).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Mapping, Optional, Tuple, Union

from .tracing import otel_trace_context

SPEC_VERSION = "1.0"
CONTENT_TYPE_STRUCTURED = "application/cloudevents+json"
CONTENT_TYPE_JSON = "application/json"
#: JetStream de-duplicates messages carrying the same value in this header
#: within the stream's duplicate window (2 minutes on the service's JOB_EVENTS).
MSG_ID_HEADER = "Nats-Msg-Id"
DEFAULT_SUBJECT_PREFIX = "job.status."
DEFAULT_SOURCE = "/job-backend"
RESTART_REQUESTED = "restart_requested"
#: Statuses the service cleans up after by default (``--terminal-statuses``).
DEFAULT_TERMINAL_STATUSES: FrozenSet[str] = frozenset({"revoked", "failure", "cancelled"})
#: The service's default limit on body plus headers (``--max-event-bytes``).
DEFAULT_MAX_EVENT_BYTES = 64 * 1024
DEFAULT_MAX_REASON_CHARS = 1024

# The service's own checks (events/decode.go, queue/names.go).
_STATUS_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,63}")
_INT64_MAX = 2**63 - 1
_TYPE_PREFIX = re.compile(r"([A-Za-z0-9_-]+\.)+")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
_SUBJECT_PREFIX = re.compile(r"([A-Za-z0-9_-]+\.)+")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

TraceContextProvider = Callable[[], Tuple[Optional[str], Optional[str]]]

#: How a naive datetime is read: an IANA zone name ("America/New_York", the
#: backend's ``TIME_ZONE``), a ``tzinfo``, or None (the zone of this process,
#: as ``datetime.astimezone()`` reads a naive time).
NaiveTimeZone = Union[None, str, _dt.tzinfo]


def resolve_time_zone(zone: NaiveTimeZone) -> Optional[_dt.tzinfo]:
    """The ``tzinfo`` for ``zone``: a zone name through ``zoneinfo``, a
    ``tzinfo`` as it is, None as None. Raises ``ValueError`` for an unknown
    name (call it at configuration time, not inside a transaction)."""
    if zone is None or isinstance(zone, _dt.tzinfo):
        return zone
    if not isinstance(zone, str) or not zone:
        raise ValueError(f"time zone must be an IANA zone name, a tzinfo or None, not {zone!r}")
    try:
        from zoneinfo import ZoneInfo
    except ImportError as exc:  # pragma: no cover - Python 3.8
        raise ValueError("a time zone name needs Python 3.9 or later (zoneinfo); pass a tzinfo instead") from exc
    try:
        return ZoneInfo(zone)
    except Exception as exc:  # ZoneInfoNotFoundError, ValueError for a malformed key
        raise ValueError(f"time zone {zone!r}: not found ({exc}); install the tzdata package or pass a tzinfo") from exc


@dataclass(frozen=True)
class EventConfig:
    """How the backend's status events are built.

    source
        CloudEvents ``source`` of every event, e.g. ``"/job-backend"``.
    type_prefix
        Reverse-DNS prefix of ``type``, e.g. ``"org.example."`` (must end with
        a dot) or ``""``; the type is ``type_prefix + "job.status.<status>"``.
    binary
        ``False`` (default): structured content mode. ``True``: binary mode.
    subject_prefix
        NATS subject prefix; must match the service's ``--event-subject``
        (default ``job.status.*``).
    terminal_statuses
        Lower-case statuses for which ``time`` is required, besides
        ``restart_requested``. Keep it equal to the service's
        ``--terminal-statuses`` (add ``"success"`` when the service has it).
    trace_context
        Function returning ``(traceparent, tracestate)`` or ``(None, None)``;
        by default the current OpenTelemetry span, when OpenTelemetry is
        installed. ``None`` turns tracing off.
    max_event_bytes
        Refuse to build an event larger than the service accepts.
    max_reason_chars
        ``reason`` is cut to this many characters (a traceback can be long).
    naive_time_zone
        How a naive ``time`` is read: the backend's zone name (Django's
        ``settings.TIME_ZONE`` when ``USE_TZ = False``, e.g.
        ``"America/New_York"``), a ``tzinfo``, or None for the zone of the
        process (``datetime.astimezone()``). An aware ``time`` is taken as it
        is. The service orders events without an attempt by the time the NATS
        server stored them, so this time only feeds its lag metric and logs;
        it never decides what is deleted.
    """

    source: str = DEFAULT_SOURCE
    type_prefix: str = ""
    binary: bool = False
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    terminal_statuses: FrozenSet[str] = DEFAULT_TERMINAL_STATUSES
    trace_context: Optional[TraceContextProvider] = otel_trace_context
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_reason_chars: int = DEFAULT_MAX_REASON_CHARS
    naive_time_zone: NaiveTimeZone = None
    id_factory: Callable[[], str] = field(default=lambda: str(uuid.uuid4()), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not _HEADER_SAFE.fullmatch(self.source):
            raise ValueError(f"source {self.source!r}: must be non-empty printable ASCII without spaces, e.g. '/job-backend'")
        if not isinstance(self.type_prefix, str) or (self.type_prefix and not _TYPE_PREFIX.fullmatch(self.type_prefix)):
            raise ValueError(f"type_prefix {self.type_prefix!r}: must be empty or dot-separated words ending with a dot, e.g. 'org.example.'")
        if not isinstance(self.subject_prefix, str) or not _SUBJECT_PREFIX.fullmatch(self.subject_prefix):
            raise ValueError(f"subject_prefix {self.subject_prefix!r}: must be literal tokens ending with a dot, e.g. 'job.status.'")
        if not isinstance(self.binary, bool):
            raise ValueError(f"binary must be True or False, not {self.binary!r}")
        if isinstance(self.terminal_statuses, str):
            raise ValueError("terminal_statuses must be a set of statuses, not a string")
        statuses = frozenset(s.strip().lower() for s in self.terminal_statuses)
        for s in statuses:
            if not _STATUS_TOKEN.fullmatch(s) or s == RESTART_REQUESTED:
                raise ValueError(f"terminal status {s!r}: not a valid terminal status")
        object.__setattr__(self, "terminal_statuses", statuses)
        if self.max_event_bytes <= 0 or self.max_reason_chars <= 0:
            raise ValueError("max_event_bytes and max_reason_chars must be positive")
        # Resolve the zone name now, so that a typo fails at start-up and
        # never inside the transaction of a status change.
        object.__setattr__(self, "naive_time_zone", resolve_time_zone(self.naive_time_zone))

    def time_required(self, status: str) -> bool:
        """Whether an event with this (lower-case) status must carry ``time``."""
        return status == RESTART_REQUESTED or status in self.terminal_statuses


@dataclass(frozen=True)
class StatusMessage:
    """A NATS message ready to publish: ``js.publish(subject, body, headers=headers)``."""

    subject: str
    body: bytes
    headers: Dict[str, str]
    event_id: str
    status: str  # lower case, as in the subject
    job_id: int
    attempt: Optional[int]

    @property
    def size(self) -> int:
        """Size as the service counts it against ``--max-event-bytes``."""
        return message_size(self.headers, self.body)


def message_size(headers: Mapping[str, str], body: bytes) -> int:
    """Body plus headers, counted as the service does (events/decode.go)."""
    n = len(body)
    for k, v in headers.items():
        n += len(k.encode("utf-8")) + len(v.encode("utf-8")) + 4
    return n


def normalize_status(status: object) -> str:
    """The subject token for ``status``: stripped, lower case, validated.

    ``"REVOKED"``, ``"revoked"`` and ``" Revoked "`` all give ``"revoked"``.
    """
    if not isinstance(status, str):
        raise ValueError(f"status must be a string, not {type(status).__name__}")
    token = status.strip().lower()
    if not _STATUS_TOKEN.fullmatch(token):
        raise ValueError(f"status {status!r}: must be a letter followed by up to 63 letters, digits or '_'")
    return token


def check_job_id(job_id: object) -> int:
    """A job id the service accepts: an int (not a bool) in 1 .. 2**63-1."""
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise ValueError(f"job_id must be a positive int (the job's primary key), not {type(job_id).__name__} {job_id!r}")
    if not 1 <= job_id <= _INT64_MAX:
        raise ValueError(f"job_id {job_id}: must be between 1 and 2**63-1")
    return job_id


def check_attempt(attempt: object) -> Optional[int]:
    """None, or a non-negative int (not a bool) that fits in 64 bits."""
    if attempt is None:
        return None
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise ValueError(f"attempt must be a non-negative int or None, not {type(attempt).__name__} {attempt!r}")
    if not 0 <= attempt <= _INT64_MAX:
        raise ValueError(f"attempt {attempt}: must be between 0 and 2**63-1")
    return attempt


def format_time(t: _dt.datetime, naive_time_zone: NaiveTimeZone = None) -> str:
    """RFC 3339 in UTC with microseconds, e.g. ``2026-11-28T15:05:39.250000Z``.

    An aware datetime is converted to UTC. A naive one (Django with
    ``USE_TZ = False``: ``datetime.datetime.now()`` and
    ``django.utils.timezone.now()`` are both naive local times) is read in
    ``naive_time_zone`` (a zone name or ``tzinfo``), or, when that is None,
    in the zone of this process (``datetime.astimezone()``). Raises
    ``ValueError`` only for something that is not a datetime.
    """
    if not isinstance(t, _dt.datetime):
        raise ValueError(f"time must be a datetime, not {type(t).__name__}")
    if t.tzinfo is None or t.utcoffset() is None:
        zone = resolve_time_zone(naive_time_zone)
        # A wall time that a DST change makes ambiguous or skipped is read
        # with fold=0 (the first occurrence): at most an hour off, and this
        # time is informational (the service orders by server time).
        t = t.replace(tzinfo=zone) if zone is not None else t.replace(tzinfo=None).astimezone()
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _optional_str(name: str, value: object) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string or None, not {type(value).__name__}")
    return value or None


def _trace(config: EventConfig) -> Tuple[Optional[str], Optional[str]]:
    if config.trace_context is None:
        return None, None
    try:
        traceparent, tracestate = config.trace_context()
    except Exception:  # tracing must never stop a status event
        return None, None
    if not isinstance(traceparent, str) or not _TRACEPARENT.fullmatch(traceparent):
        return None, None
    if not isinstance(tracestate, str) or not tracestate or "\r" in tracestate or "\n" in tracestate:
        tracestate = None
    return traceparent, tracestate


def build_status_event(
    job_id: int,
    status: str,
    *,
    time: Optional[_dt.datetime] = None,
    previous_status: Optional[str] = None,
    attempt: Optional[int] = None,
    dispatch_mode: Optional[str] = None,
    reason: Optional[str] = None,
    actor: Optional[str] = None,
    config: EventConfig = EventConfig(),
    event_id: Optional[str] = None,
) -> StatusMessage:
    """Build the ``job.status.<status>`` message for one status transition.

    ``status`` is the backend's status in any case (``"REVOKED"``); the
    subject token is its lower case, ``data.status`` its upper case. ``time``
    is when the transition happened (aware, or naive in
    ``config.naive_time_zone``); it is required for terminal statuses and
    ``restart_requested``. Fields left ``None`` (or
    empty) are omitted. Raises ``ValueError`` on anything the service would
    reject.
    """
    job_id = check_job_id(job_id)
    token = normalize_status(status)
    attempt = check_attempt(attempt)
    previous = _optional_str("previous_status", previous_status)
    dispatch_mode = _optional_str("dispatch_mode", dispatch_mode)
    reason = _optional_str("reason", reason)
    actor = _optional_str("actor", actor)
    if time is None:
        if config.time_required(token):
            raise ValueError(f"status {token}: time (when the transition happened) is required for terminal and restart events")
        when = None
    else:
        when = format_time(time, config.naive_time_zone)
    if reason is not None and len(reason) > config.max_reason_chars:
        reason = reason[: config.max_reason_chars - 1] + "\u2026"
    if event_id is None:
        event_id = config.id_factory()
    if not isinstance(event_id, str) or not _HEADER_SAFE.fullmatch(event_id):
        raise ValueError(f"event id {event_id!r}: must be non-empty printable ASCII without spaces")

    data: Dict[str, object] = {"job_id": job_id, "status": token.upper()}
    if previous is not None and previous.strip():
        data["previous_status"] = previous.strip().upper()
    if attempt is not None:
        data["attempt"] = attempt
    if dispatch_mode is not None:
        data["dispatch_mode"] = dispatch_mode
    if reason is not None:
        data["reason"] = reason
    if actor is not None:
        data["actor"] = actor

    subject = config.subject_prefix + token
    ce_type = config.type_prefix + "job.status." + token
    traceparent, tracestate = _trace(config)
    # The context attributes, in both content modes.
    attrs: Dict[str, object] = {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "source": config.source,
        "type": ce_type,
        "subject": str(job_id),
    }
    if when is not None:
        attrs["time"] = when
    trace: Dict[str, str] = {}
    if traceparent is not None:
        trace["traceparent"] = traceparent
        if tracestate is not None:
            trace["tracestate"] = tracestate
    if config.binary:
        headers = {"ce-" + k: str(v) for k, v in {**attrs, **trace}.items()}
        headers["Content-Type"] = CONTENT_TYPE_JSON
        body = _json(data)
    else:
        event = {**attrs, "datacontenttype": CONTENT_TYPE_JSON, **trace, "data": data}
        headers = {"Content-Type": CONTENT_TYPE_STRUCTURED}
        body = _json(event)
    headers[MSG_ID_HEADER] = event_id
    msg = StatusMessage(subject=subject, body=body, headers=headers, event_id=event_id,
                        status=token, job_id=job_id, attempt=attempt)
    if msg.size > config.max_event_bytes:
        raise ValueError(f"job {job_id} status {token}: event is {msg.size} bytes, over the limit of {config.max_event_bytes}")
    return msg


def with_attempt(msg: StatusMessage, attempt: int, config: EventConfig = EventConfig()) -> StatusMessage:
    """``msg`` with ``data.attempt`` set to ``attempt``: the same event (id,
    ``Nats-Msg-Id``, time, trace context), for a run number learnt after the
    event was built (the attempt stamped on the job's stream). Raises
    ``ValueError`` for a bad attempt or an event grown over the size limit."""
    attempt = check_attempt(attempt)
    if attempt is None:
        raise ValueError("attempt is required")
    doc = json.loads(msg.body)
    data = doc if config.binary else doc["data"]
    data["attempt"] = attempt
    out = StatusMessage(subject=msg.subject, body=_json(doc), headers=dict(msg.headers), event_id=msg.event_id,
                        status=msg.status, job_id=msg.job_id, attempt=attempt)
    if out.size > config.max_event_bytes:
        raise ValueError(f"job {msg.job_id} status {msg.status}: event is {out.size} bytes, over the limit of "
                         f"{config.max_event_bytes}")
    return out


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
