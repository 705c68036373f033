"""The stream-name rule every ingress applies, URL redaction, and the HTTP control gate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http.server import is_loopback
from gateway.media.names import MAX_STREAM_NAME, BadStreamName, validate_stream_name
from gateway.media.sources.rtsp_pulls import redacted
from gateway.wcs import messages


def test_the_websocket_api_uses_the_shared_rule() -> None:
    assert messages.validate_stream_name is validate_stream_name
    assert messages.MAX_STREAM_NAME == MAX_STREAM_NAME


@pytest.mark.parametrize(
    "name",
    ["cam", "SN/165-0-7/normal-0", "x" * MAX_STREAM_NAME, "rtsp://u:p@cam.local:554/live", "ünï cöde"],
)
def test_good_names(name: str) -> None:
    assert validate_stream_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        (None, "must be a string"),
        ("x" * 300, "longer than 256"),
        ("\u0000", "control characters"),
        ("cam\n1", "control characters"),
        ("cam\x85", "control characters"),
        ("rtsp://u:p@:99999/x", "not a valid URL"),
        ("rtsp://[::1", "not a valid URL"),
        ("rtmp://[::1", "not rtsp://"),
        ("file:///etc/passwd", "not rtsp://"),
    ],
)
def test_bad_names(name: object, why: str) -> None:
    with pytest.raises(BadStreamName, match=why):
        validate_stream_name(name)


@given(st.one_of(st.text(), st.text().map(lambda t: "rtsp://" + t)))
def test_the_rule_returns_the_name_or_raises_its_own_error(name: str) -> None:
    try:
        assert validate_stream_name(name) == name
    except BadStreamName:
        pass


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("rtsp://u:p@:99999/x", "rtsp://u:***@:99999/x"),
        ("rtmp://[::1", "rtmp://[::1"),
        ("rtsp://u:s3cret@[::1]:554/x?a=b@c", "rtsp://u:***@[::1]:554/x?a=b@c"),
        ("rtsp://cam/x", "rtsp://cam/x"),
        ("rtsp://u@cam/x", "rtsp://u@cam/x"),
        ("not a url", "not a url"),
    ],
)
def test_redaction(uri: str, expected: str) -> None:
    assert redacted(uri) == expected


@given(st.text(), st.text(alphabet=st.characters(blacklist_characters="/?#@"), min_size=1))
def test_redaction_never_raises_and_hides_the_password(prefix: str, password: str) -> None:
    redacted(prefix)  # any text at all
    shown = redacted(f"rtsp://user:{password}@host/{prefix}")
    assert shown.startswith("rtsp://user:***@host/")


@pytest.mark.parametrize(
    ("remote", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("192.168.1.20", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("", False),  # a Unix socket's peer
        (None, False),
    ],
)
def test_loopback(remote: str | None, loopback: bool) -> None:
    assert is_loopback(remote) is loopback
