"""The service's key-value bucket of per-job records, read and written raw.

The bucket is the stream ``KV_<bucket>``; a record is the last message on
``$KV.<bucket>.job.<id>`` and its revision is that message's sequence. Writes
are compare-and-set on the subject's last sequence, exactly as a key-value
``create`` (expected 0) or ``update`` (expected the revision read). When the
bucket is missing, it is created as the service creates it (Go's
``jetstream.CreateKeyValue`` with the service's ``StoreConfig``: history 1,
file storage, the configured replicas and max age, the key-value stream
settings that client writes).

Needs nats-py.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

from . import jsapi
from .handshake import BucketSettings

class Conflict(Exception):
    """The key's revision changed since it was read."""


class Bucket:
    """The records of one bucket, over a nats-py connection."""

    def __init__(self, nc: Any, settings: BucketSettings, *, timeout: float) -> None:
        self.nc = nc
        self.settings = settings
        self.timeout = timeout

    async def info(self, *, timeout: Optional[float] = None) -> Optional[jsapi.ResourceInfo]:
        return await jsapi.stream_info(self.nc, self.settings.stream, timeout=timeout or self.timeout)

    async def ensure(self) -> Tuple[jsapi.ResourceInfo, bool]:
        """The bucket's stream info, creating the bucket first when it is
        missing; the flag says whether this call created it."""
        info = await self.info()
        if info is not None:
            return info, False
        try:
            await jsapi.create_stream(self.nc, self.settings.stream_config(), timeout=self.timeout)
            created = True
        except jsapi.ApiError as exc:
            if exc.err_code != jsapi.ERR_STREAM_NAME_IN_USE:
                raise
            created = False  # another process (the service) created it first
        info = await self.info()
        if info is None:
            raise jsapi.ApiError(self.settings.stream, {"code": 404, "description": "bucket vanished after creation"})
        return info, created

    async def get(self, job_id: int, *, timeout: Optional[float] = None) -> Tuple[Optional[Dict[str, Any]], int]:
        """The job's record and its revision: ``(None, 0)`` for a key never
        written, ``(None, rev)`` for a deleted one; an unreadable value is
        read as no record (it will be overwritten only by compare-and-set)."""
        got = await jsapi.last_message(self.nc, self.settings.stream, self.settings.subject(job_id),
                                       timeout=timeout or self.timeout)
        if got is None:
            return None, 0
        rev, data = got
        if data is None:
            return None, rev
        try:
            value = json.loads(data)
        except ValueError:
            return None, rev
        return (value if isinstance(value, dict) else None), rev

    async def put(self, job_id: int, value: Dict[str, Any], expected: int, *, timeout: Optional[float] = None) -> int:
        """Write the record if the key is still at revision ``expected``;
        the new revision, or ``Conflict``."""
        body = json.dumps(value, separators=(",", ":")).encode()
        try:
            return await jsapi.publish_expecting(self.nc, self.settings.subject(job_id), body, expected,
                                                 timeout=timeout or self.timeout)
        except jsapi.ApiError as exc:
            if exc.err_code == jsapi.ERR_WRONG_LAST_SEQUENCE:
                raise Conflict(f"record of job {job_id} changed (expected revision {expected})") from exc
            raise
