"""Hostile RTMP pushers, sans I/O: metadata that makes no sense is ignored field by field
(issue 11, probe finding 6), and the deadlines that close connections which never publish
(finding 7)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.media.ingest_keys import IngestKey
from gateway.media.registry import StreamRegistry
from gateway.media.rtmp.client import PublishStarted, RtmpClientConnection
from gateway.media.rtmp.flv import metadata_sound_format
from gateway.media.rtmp.protocol import MetaData, PublishRequested, RtmpServerConnection
from gateway.media.sources.rtmp import H264, RtmpDeadlines, RtmpPush

NAN, INF = math.nan, math.inf


def pump(client: RtmpClientConnection, server: RtmpServerConnection) -> list[Any]:
    """Bytes both ways until neither side has more to say; the server's events."""
    events: list[Any] = []
    for _ in range(20):
        up, down = client.data_to_send(), server.data_to_send()
        if not up and not down:
            break
        if up:
            events += server.receive_data(up)
            for event in events:
                if isinstance(event, PublishRequested) and server.publishing is None:
                    server.accept_publish(event)
        if down:
            client.receive_data(down)
    return events


def publishing_pair() -> tuple[RtmpClientConnection, RtmpServerConnection]:
    client = RtmpClientConnection("live", "rtmp://127.0.0.1/live", "key")
    server = RtmpServerConnection()
    pump(client, server)
    assert client.publishing and server.publishing is not None
    return client, server


def push_of(name: str) -> RtmpPush:
    stream = StreamRegistry().claim(name)
    stream.set_codecs(H264, None)
    return RtmpPush(stream, IngestKey("k", name))


@pytest.mark.parametrize("codec_id", [NAN, INF, -INF, 7.5, 1e308, -8.0, True, "7", "", None, {"a": 1}, 2**70])
def test_an_audio_codec_id_that_names_nothing_is_ignored(codec_id: Any) -> None:
    """NaN and ±Infinity raised out of the connection handler before (int(nan))."""
    client, server = publishing_pair()
    client.send_metadata({"audiocodecid": codec_id, "width": NAN, "framerate": -INF})
    (metadata,) = [e for e in pump(client, server) if isinstance(e, MetaData)]
    push = push_of("hostile")
    push.metadata(metadata.values)
    assert push.stream.video_codec == H264 and push.stream.audio_codec is None


@pytest.mark.parametrize(
    ("codec_id", "audio"), [(10, "opus"), (10.0, "opus"), ("mp4a", "opus"), (7, "PCMA"), (8.0, "PCMU")]
)
def test_an_audio_codec_id_that_names_a_codec_is_offered(codec_id: Any, audio: str) -> None:
    push = push_of("announced")
    push.metadata({"audiocodecid": codec_id, "videocodecid": NAN})  # one bad field, one good
    assert push.stream.audio_codec is not None and push.stream.audio_codec.name == audio


amf0_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-(2**80), 2**80) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500)
@given(amf0_values)
def test_any_audio_codec_id_gives_a_sound_format_or_none(value: Any) -> None:
    assert metadata_sound_format(value) in (None, 7, 8, 10)


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["audiocodecid", "width", "height", "x"]), amf0_values))
def test_any_metadata_leaves_a_push_usable(values: dict[str, Any]) -> None:
    push = push_of("fuzzed")
    push.metadata(values)
    assert push.stream.video_codec == H264


# --- deadlines ------------------------------------------------------------------------------------


def test_deadlines_by_phase() -> None:
    deadlines = RtmpDeadlines(handshake=10.0, publish=30.0)
    assert deadlines.next(100.0, 105.0, handshake_done=False, publishing=False) == (
        110.0,
        "no RTMP handshake in time",
    )
    # Data after the handshake (connect, createStream, ...) does not put off the publish deadline.
    assert deadlines.next(100.0, 125.0, handshake_done=True, publishing=False) == (
        130.0,
        "no publish in time",
    )
    # A push may go on for ever, but not fall silent for longer than the publish deadline.
    assert deadlines.next(100.0, 5000.0, handshake_done=True, publishing=True) == (
        5030.0,
        "the publisher sent nothing",
    )


def test_the_handshake_is_done_after_c2() -> None:
    client = RtmpClientConnection("live", "rtmp://127.0.0.1/live", "key")
    server = RtmpServerConnection()
    c0c1 = client.data_to_send()
    server.receive_data(c0c1)
    assert not server.handshake_done  # C0 and C1 only: the half-open case
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # C2, connect
    assert server.handshake_done


def test_a_connection_that_connects_but_never_publishes_stays_unpublished() -> None:
    """What the publish deadline is for: the server answers connect and waits."""
    client = RtmpClientConnection("live", "rtmp://127.0.0.1/live", "key")
    server = RtmpServerConnection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # C2 and connect, nothing after
    assert server.handshake_done and server.publishing is None
    assert not [e for e in client.receive_data(server.data_to_send()) if isinstance(e, PublishStarted)]
