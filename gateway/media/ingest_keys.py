"""Ingest keys: an unguessable key lets one push at a time publish one stream name, until
the issuer revokes it.

The DJI bridge issues a key for each ``live_start_push`` and puts it in the push URL; the
RTMP (and later WHIP) ingest claims it when the device connects and releases it when that
push ends, so the device can reconnect with the same URL after a network glitch. A key is
refused for a second concurrent push, for any other key, and once revoked (the stream
ended).

Every key starts with ``KEY_PREFIX``: a push whose name has it is a key push, refused
unless the key is open, even where publishing by stream name is allowed, so a wrong or
stale key never becomes a stream of its own.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

KEY_PREFIX = "ingestkey-"


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

    def issue(self, stream_name: str, *, keep_stream: bool = False) -> IngestKey:
        issued = IngestKey(KEY_PREFIX + secrets.token_urlsafe(24), stream_name, keep_stream)
        self._open[issued.key] = issued
        return issued

    def adopt(self, key: IngestKey) -> None:
        """A key issued elsewhere (another process's bridge) that pushes may use here too."""
        self._open[key.key] = key

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
        self._open.pop(key, None)
        self._in_use.discard(key)

    @staticmethod
    def is_key(name: str) -> bool:
        """Shaped like an issued key (open, busy, revoked or wrong): a push with it is a
        key push, never a publish by that name."""
        return name.startswith(KEY_PREFIX)

    def __len__(self) -> int:
        return len(self._open)
