"""One-time ingest keys: an unguessable key lets exactly one push publish one stream name.

The DJI bridge issues a key for each ``live_start_push`` and puts it in the push URL; the
RTMP (and later WHIP) ingest claims it when the device connects. A key works once: it is
refused for anyone else, after it was used, and after it was revoked.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IngestKey:
    key: str
    stream_name: str


class IngestKeys:
    def __init__(self) -> None:
        self._open: dict[str, IngestKey] = {}

    def issue(self, stream_name: str) -> IngestKey:
        issued = IngestKey(secrets.token_urlsafe(24), stream_name)
        self._open[issued.key] = issued
        return issued

    def claim(self, key: str) -> IngestKey | None:
        """The key's grant if it is open; it is used up by this call."""
        return self._open.pop(key, None)

    def revoke(self, key: str) -> None:
        self._open.pop(key, None)

    def __len__(self) -> int:
        return len(self._open)
