"""Raw JetStream API requests, for what nats-py's typed API leaves out.

nats-py 2.10.0's ``StreamInfo`` drops the server's ``ts`` (its clock when it
answered) and ``created`` (when the stream was created, in that clock), and
its key-value API cannot write with an expected revision and read the
revision's server time in one step. The Start path needs all of them: the run
number is taken from the server's clock, a lease is judged against it, and a
fence compares creation times. Each call here is one request on the
``$JS.API`` subjects (or a publish to the bucket's subject), with a timeout;
the answers are plain dicts of the server's JSON.

The requests need nats-py (``nc`` is a connected ``nats.aio.client.Client``);
the time and metadata helpers do not.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from .streams import ATTEMPT_METADATA_KEY

#: JetStream API error codes the Start path tells apart.
ERR_STREAM_NOT_FOUND = 10059
ERR_CONSUMER_NOT_FOUND = 10014
ERR_NO_MESSAGE = 10037
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_STREAM_NAME_IN_USE = 10058

#: The header that makes a publish a compare-and-set on the subject's last sequence.
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"

API_PREFIX = "$JS.API"


class ApiError(Exception):
    """The JetStream API answered with an error."""

    def __init__(self, subject: str, error: Dict[str, Any]) -> None:
        self.code = int(error.get("code") or 0)
        self.err_code = int(error.get("err_code") or 0)
        self.description = str(error.get("description") or "")
        super().__init__(f"{subject}: {self.description} (code {self.code}, err_code {self.err_code})")

    @property
    def not_found(self) -> bool:
        return self.code == 404


_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$")


def parse_time_ns(text: Optional[str]) -> Optional[int]:
    """Nanoseconds since the epoch of an RFC 3339 time as NATS writes it
    (``2026-07-23T10:11:12.123456789Z``); None for None, Go's zero time or
    anything unreadable."""
    if not text:
        return None
    m = _RFC3339.match(text)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, zone = m.groups()
    try:
        base = _dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=_dt.timezone.utc)
    except ValueError:
        return None
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        base -= sign * _dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    if base.year < 1970:
        return None  # Go's zero time: "0001-01-01T00:00:00Z"
    ns = (frac or "0")[:9].ljust(9, "0")
    epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    delta = base - epoch
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + int(ns)


def format_time_ns(ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds, as Go writes a ``time.Time``."""
    secs, frac = divmod(ns, 1_000_000_000)
    t = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(seconds=secs)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def stamp_of(metadata: Optional[Dict[str, Any]]) -> Optional[int]:
    """The run number stamped in a stream's or consumer's metadata
    (``job_attempt``), or None when absent or unreadable."""
    raw = (metadata or {}).get(ATTEMPT_METADATA_KEY)
    try:
        value = int(str(raw))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


@dataclass
class ResourceInfo:
    """A stream's or consumer's info as the Start path reads it."""

    name: str
    created_ns: Optional[int]
    #: The server's clock when it answered (streams, NATS 2.10 and later).
    ts_ns: Optional[int]
    config: Dict[str, Any] = field(default_factory=dict)
    state: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def stamp(self) -> Optional[int]:
        return stamp_of(self.config.get("metadata"))

    @property
    def messages(self) -> int:
        return int(self.state.get("messages") or 0)


async def request(nc: Any, subject: str, payload: Optional[Dict[str, Any]] = None, *, timeout: float,
                  headers: Optional[Dict[str, str]] = None, data: Optional[bytes] = None) -> Dict[str, Any]:
    """One request; the answer's JSON, or ``ApiError``. ``nats.errors.TimeoutError``
    and ``nats.errors.NoRespondersError`` pass through."""
    body = data if data is not None else (json.dumps(payload).encode() if payload is not None else b"")
    msg = await nc.request(subject, body, timeout=timeout, headers=headers)
    try:
        doc = json.loads(msg.data)
    except ValueError as exc:
        raise ApiError(subject, {"code": 500, "description": f"unreadable answer: {exc}"}) from exc
    if isinstance(doc, dict) and doc.get("error"):
        raise ApiError(subject, doc["error"])
    return doc if isinstance(doc, dict) else {}


def _info(name: str, doc: Dict[str, Any]) -> ResourceInfo:
    return ResourceInfo(name=name, created_ns=parse_time_ns(doc.get("created")), ts_ns=parse_time_ns(doc.get("ts")),
                        config=doc.get("config") or {}, state=doc.get("state") or {}, raw=doc)


async def stream_info(nc: Any, name: str, *, timeout: float) -> Optional[ResourceInfo]:
    """``$JS.API.STREAM.INFO.<name>``; None when the stream does not exist."""
    try:
        doc = await request(nc, f"{API_PREFIX}.STREAM.INFO.{name}", timeout=timeout)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise
    return _info(name, doc)


async def consumer_info(nc: Any, stream: str, consumer: str, *, timeout: float) -> Optional[ResourceInfo]:
    """``$JS.API.CONSUMER.INFO.<stream>.<consumer>``; None when either is missing."""
    try:
        doc = await request(nc, f"{API_PREFIX}.CONSUMER.INFO.{stream}.{consumer}", timeout=timeout)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise
    return _info(consumer, doc)


async def create_stream(nc: Any, config: Dict[str, Any], *, timeout: float) -> ResourceInfo:
    """``$JS.API.STREAM.CREATE.<name>`` with ``config`` (the server's JSON field
    names); ``ApiError`` with ``err_code`` 10058 when the name is in use with
    another configuration."""
    name = str(config["name"])
    return _info(name, await request(nc, f"{API_PREFIX}.STREAM.CREATE.{name}", config, timeout=timeout))


async def purge_stream(nc: Any, name: str, *, timeout: float) -> Optional[int]:
    """Purge every message; the number purged, or None when the stream is gone."""
    try:
        doc = await request(nc, f"{API_PREFIX}.STREAM.PURGE.{name}", timeout=timeout)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise
    return int(doc.get("purged") or 0)


async def delete_stream(nc: Any, name: str, *, timeout: float) -> bool:
    """Delete a stream (its consumers with it); False when it was already gone."""
    try:
        await request(nc, f"{API_PREFIX}.STREAM.DELETE.{name}", timeout=timeout)
    except ApiError as exc:
        if exc.not_found:
            return False
        raise
    return True


async def delete_consumer(nc: Any, stream: str, consumer: str, *, timeout: float) -> bool:
    """Delete a consumer; False when it (or its stream) was already gone."""
    try:
        await request(nc, f"{API_PREFIX}.CONSUMER.DELETE.{stream}.{consumer}", timeout=timeout)
    except ApiError as exc:
        if exc.not_found:
            return False
        raise
    return True


def _header_value(raw_headers: Optional[str], name: str) -> Optional[str]:
    if not raw_headers:
        return None
    try:
        text = base64.b64decode(raw_headers).decode("utf-8", "replace")
    except (ValueError, TypeError):
        return None
    for line in text.split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name.lower():
            return value.strip()
    return None


async def last_message(nc: Any, stream: str, subject: str, *, timeout: float) -> Optional[Tuple[int, Optional[bytes]]]:
    """The last message on ``subject`` in ``stream``: ``(sequence, data)``,
    ``data`` None for a key-value delete or purge marker; None when the
    subject has no message (or the stream does not exist)."""
    try:
        doc = await request(nc, f"{API_PREFIX}.STREAM.MSG.GET.{stream}", {"last_by_subj": subject}, timeout=timeout)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise
    msg = doc.get("message") or {}
    seq = int(msg.get("seq") or 0)
    op = (_header_value(msg.get("hdrs"), "KV-Operation") or "").upper()
    if op in ("DEL", "PURGE"):
        return seq, None
    return seq, base64.b64decode(msg.get("data") or "")


async def publish_expecting(nc: Any, subject: str, data: bytes, expected_last: int, *, timeout: float) -> int:
    """Publish ``data`` on ``subject`` only if the subject's last sequence is
    still ``expected_last`` (0: no message on it): a compare-and-set, as a
    key-value ``create``/``update``. Returns the new sequence; ``ApiError``
    with ``err_code`` 10071 on a conflict."""
    import nats.errors

    headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected_last)}
    try:
        doc = await request(nc, subject, timeout=timeout, headers=headers, data=data)
    except nats.errors.NoRespondersError as exc:
        raise ApiError(subject, {"code": 503, "description": "no stream captures this subject"}) from exc
    return int(doc.get("seq") or 0)
