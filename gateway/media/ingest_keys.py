"""Ingest keys: an unguessable key lets one push at a time publish one stream name, until
the issuer revokes it.

The DJI bridge issues a key for each ``live_start_push`` and puts it in the push URL; the
RTMP (and later WHIP) ingest claims it when the device connects and releases it when that
push ends, so the device can reconnect with the same URL after a network glitch. A key is
refused for a second concurrent push, for any other key, and once revoked (the stream
ended).
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IngestKey:
    key: str
    stream_name: str
    # The stream outlives a push that drops (viewers stay attached for the next push).
    keep_stream: bool = False


class IngestKeys:
    def __init__(self) -> None:
        self._open: dict[str, IngestKey] = {}
        self._in_use: set[str] = set()
        # Revoked keys stay known for a while, so a late push with one is refused as a key
        # rather than taken for a stream name.
        self._revoked: deque[str] = deque(maxlen=10_000)

    def issue(self, stream_name: str, *, keep_stream: bool = False) -> IngestKey:
        issued = IngestKey(secrets.token_urlsafe(24), stream_name, keep_stream)
        self._open[issued.key] = issued
        return issued

    def claim(self, key: str) -> IngestKey | None:
        """The key's grant if it is open and no push is using it; in use from now on."""
        grant = self._open.get(key)
        if grant is None or key in self._in_use:
            return None
        self._in_use.add(key)
        return grant

    def release(self, key: str) -> None:
        """The push using ``key`` ended; the key may push again until it is revoked."""
        self._in_use.discard(key)

    def revoke(self, key: str) -> None:
        if self._open.pop(key, None) is not None:
            self._revoked.append(key)
        self._in_use.discard(key)

    def known(self, key: str) -> bool:
        """Issued (open, busy or recently revoked): a push with it is a key push."""
        return key in self._open or key in self._revoked

    def __len__(self) -> int:
        return len(self._open)
