"""The service's per-job record, as the backend reads and writes it.

queue-janitor keeps one JSON record per job in its key-value bucket
(``queue_janitor_jobs``, key ``job.<id>``; ``queue.Record`` in the service).
Every change is a compare-and-set on the key's revision, and acting on a
job's queue needs the record's lease. When the service does not answer a
Start, the backend acts as one more replica (``start.py``): it takes the
lease, flushes, stamps the new run's stream and gives the lease back, marking
the restart done so that the service, reading the request later, answers
``already_done`` and deletes nothing.

Pure functions of the record (a dict of the stored JSON); every field this
module does not know is kept as it is, so the service's reader (which
ignores unknown fields) sees its own record plus the backend's additions.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import socket
from typing import Any, Callable, Dict, Optional

#: The record version the backend writes in a record it creates (the
#: service keeps whatever version a record has until it rewrites it).
NEW_RECORD_VERSION = 3

#: The record's state after a restart flush: the job is live, a new run
#: starts. The service's reconciler keeps the streams of a live job.
STATE_FLUSHED = "flushed"

Record = Dict[str, Any]


def default_owner() -> str:
    """The lease owner this process writes: ``backend:<hostname>:<pid>``."""
    return f"backend:{socket.gethostname()}:{os.getpid()}"


def new_token() -> str:
    """A claim's unique token (24 hex digits, as the service makes them)."""
    return secrets.token_hex(12)


def _int(value: Any) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def known_attempt(record: Optional[Record]) -> Optional[int]:
    """The highest run number the record names (``attempt``,
    ``restart_attempt``), or None."""
    if not record:
        return None
    values = [v for v in (_int(record.get("attempt")), _int(record.get("restart_attempt"))) if v is not None]
    return max(values) if values else None


def choose_attempt(server_ms: int, *known: Optional[int]) -> int:
    """The run number of a Start: the NATS server's clock in milliseconds, or
    one more than the highest number already known (a stream's stamp, the
    record's attempts) when that is higher. It grows with every Start without
    a counter in the backend's database."""
    highest = max((k for k in known if k is not None), default=-1)
    return max(server_ms, highest + 1)


def lease_of(record: Optional[Record]) -> Optional[Dict[str, Any]]:
    lease = (record or {}).get("lease")
    return lease if isinstance(lease, dict) else None


def lease_ttl_seconds(lease: Dict[str, Any], default: float) -> float:
    """A lease's length: its ``ttl`` (Go nanoseconds), else ``default``."""
    ttl = _int(lease.get("ttl"))
    return ttl / 1e9 if ttl and ttl > 0 else default


class LeaseWatch:
    """Judges other claims' leases on this process's monotonic clock.

    A lease is live until its ``ttl`` has elapsed since this process first
    saw the record revision that holds it: the revision was written before
    it was seen, so the lease ends no later than that by the server's clock
    (which the service judges it by), whatever the clocks of the two hosts
    say. A renewal is a new revision and starts the count again."""

    def __init__(self, token: str, default_ttl: float, clock: Callable[[], float]) -> None:
        self._token = token
        self._default = default_ttl
        self._clock = clock
        self._first_seen: Dict[int, float] = {}

    def live_for(self, record: Optional[Record], revision: int) -> float:
        """Seconds until the record's lease ends (0: no live lease of another
        claim; a lease with this claim's own token never blocks)."""
        lease = lease_of(record)
        if lease is None or lease.get("token") == self._token:
            return 0.0
        seen = self._first_seen.setdefault(revision, self._clock())
        return max(0.0, seen + lease_ttl_seconds(lease, self._default) - self._clock())


def _rfc3339(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed(record: Optional[Record], *, owner: str, token: str, lease_seconds: float,
            now: Optional[_dt.datetime] = None) -> Record:
    """The record with this claim's lease: every field kept, ``lease`` set
    (``ttl`` in Go nanoseconds, ``until`` by this host's clock, for display),
    ``v`` kept (``3`` in a record created here)."""
    out: Record = dict(record) if record else {"v": NEW_RECORD_VERSION}
    now = now or _dt.datetime.now(_dt.timezone.utc)
    out["lease"] = {"owner": owner, "token": token, "ttl": int(round(lease_seconds * 1e9)),
                    "until": _rfc3339(now + _dt.timedelta(seconds=lease_seconds))}
    return out


def released(record: Record, *, attempt: int, event_id: str) -> Record:
    """The record once the backend has flushed for the restart ``event_id``
    and stamped run ``attempt``: the lease removed, ``attempt`` raised to it,
    the restart recorded as done (``restart_event_id``, ``restart_attempt``,
    ``restart_done``) so that the service answers that request
    ``already_done``, and ``state`` ``flushed`` (the job is live: the
    service's reconciler must not take the new run's stream for a finished
    job's leftover). Every other field is kept."""
    out = dict(record)
    out.pop("lease", None)
    current = _int(out.get("attempt"))
    out["attempt"] = attempt if current is None else max(current, attempt)
    out["restart_event_id"] = event_id
    out["restart_attempt"] = attempt
    out["restart_done"] = True
    out["state"] = STATE_FLUSHED
    return out


def holds(record: Optional[Record], token: str) -> bool:
    """Whether the record's lease is this claim's."""
    lease = lease_of(record)
    return lease is not None and lease.get("token") == token


__all__ = [
    "NEW_RECORD_VERSION",
    "LeaseWatch",
    "choose_attempt",
    "claimed",
    "default_owner",
    "holds",
    "known_attempt",
    "lease_of",
    "lease_ttl_seconds",
    "new_token",
    "released",
]
