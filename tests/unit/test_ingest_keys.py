"""gateway.media.ingest_keys: unguessable keys, one push at a time, until revoked."""

from __future__ import annotations

import re

import pytest

from gateway.media.ingest_keys import KEY_PREFIX, IngestKey, IngestKeys

URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def test_issue_gives_unguessable_url_safe_keys() -> None:
    keys = IngestKeys()
    issued = [keys.issue("drone-1") for _ in range(2000)]
    assert len({grant.key for grant in issued}) == 2000
    for grant in issued:
        assert isinstance(grant, IngestKey)
        assert grant.stream_name == "drone-1"
        assert len(grant.key) >= 24
        assert URL_SAFE.match(grant.key), grant.key  # fits in an RTMP URL path unescaped
    assert len(keys) == 2000


def test_keys_of_different_streams_differ() -> None:
    keys = IngestKeys()
    a, b = keys.issue("a"), keys.issue("a")
    assert a.key != b.key
    assert keys.claim(b.key) == b
    assert keys.claim(a.key) == a


def test_one_push_at_a_time_until_revoked() -> None:
    keys = IngestKeys()
    grant = keys.issue("cam")
    assert keys.claim(grant.key) == IngestKey(grant.key, "cam")
    assert keys.claim(grant.key) is None  # a second, concurrent push
    keys.release(grant.key)
    assert keys.claim(grant.key) == grant  # the device reconnects after a glitch
    keys.revoke(grant.key)
    assert keys.claim(grant.key) is None
    assert len(keys) == 0


def test_keep_stream_is_part_of_the_grant() -> None:
    keys = IngestKeys()
    assert keys.issue("cam", keep_stream=True).keep_stream
    assert not keys.issue("cam").keep_stream


def test_claim_leaves_other_keys_open() -> None:
    keys = IngestKeys()
    first, second = keys.issue("one"), keys.issue("two")
    assert keys.claim(first.key) == first
    assert len(keys) == 2  # issued keys stay until revoked
    assert keys.claim(second.key) == second


def test_revoke() -> None:
    keys = IngestKeys()
    grant = keys.issue("cam")
    other = keys.issue("cam2")
    keys.revoke(grant.key)
    assert keys.claim(grant.key) is None
    assert keys.claim(other.key) == other
    keys.revoke(grant.key)  # revoking twice, or an unknown key, is harmless
    keys.revoke("never-issued")
    keys.revoke(other.key)  # after it was used
    assert len(keys) == 0


@pytest.mark.parametrize("key", ["", "unknown", "a" * 32, " ", "live/abc"])
def test_unknown_key(key: str) -> None:
    keys = IngestKeys()
    grant = keys.issue("cam")
    assert keys.claim(key) is None
    assert keys.claim(grant.key[:-1]) is None  # a near miss is not a match
    assert keys.claim(grant.key.upper() if grant.key.upper() != grant.key else grant.key + "x") is None
    assert keys.claim(grant.key) == grant


def test_grant_is_immutable() -> None:
    grant = IngestKeys().issue("cam")
    with pytest.raises(AttributeError):
        grant.stream_name = "other"  # type: ignore[misc]


def test_every_key_is_key_shaped_and_names_are_not() -> None:
    keys = IngestKeys()
    grant = keys.issue("cam")
    assert grant.key.startswith(KEY_PREFIX) and IngestKeys.is_key(grant.key)
    keys.revoke(grant.key)
    assert IngestKeys.is_key(grant.key)  # still a key push after revocation: refused, not a name
    assert IngestKeys.is_key(KEY_PREFIX + "made-up")
    for name in ("cam", "live-1", "SN1/53-0-0/normal-0", "", "key", "ingest"):
        assert not IngestKeys.is_key(name)
