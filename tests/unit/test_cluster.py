"""The sans-I/O parts of `--workers`: the local links' framing, the media frame encoding,
the stream-name directory and its replicas, per-worker settings, and the registry's use of
the directory."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cluster import wire
from gateway.cluster.directory import Directory, Notice, Replica
from gateway.cluster.supervisor import config_from_message, config_message, worker_config
from gateway.config import Config, ConfigError, load
from gateway.media.registry import StreamNameInUse, StreamRegistry
from gateway.media.stream import MediaFrame

kinds = st.sampled_from(list(wire.Kind))


@given(st.lists(st.tuples(kinds, st.binary(max_size=300)), max_size=8), st.integers(1, 64))
def test_frames_come_out_as_they_went_in_however_the_bytes_are_cut(
    frames: list[tuple[wire.Kind, bytes]], chunk: int
) -> None:
    data = b"".join(wire.frame(kind, payload) for kind, payload in frames)
    reader = wire.FrameReader(1024)
    got = []
    for start in range(0, len(data), chunk):
        got += reader.feed(data[start : start + chunk])
    assert got == frames


@given(st.binary(max_size=200))
def test_any_bytes_give_frames_or_a_wire_error(data: bytes) -> None:
    reader = wire.FrameReader(64)
    try:
        for kind, payload in reader.feed(data):
            assert isinstance(kind, wire.Kind) and len(payload) < 64
    except wire.WireError:
        pass


def test_an_oversized_or_unknown_frame_is_refused() -> None:
    with pytest.raises(wire.WireError, match="at most 16"):
        wire.FrameReader(16).feed(wire.frame(wire.Kind.CONTROL, b"x" * 16))
    with pytest.raises(wire.WireError, match="unknown frame type"):
        wire.FrameReader(16).feed(b"\x00\x00\x00\x01\x99")
    with pytest.raises(wire.WireError, match="not a JSON object"):
        wire.json_payload(b"[1]")


@given(
    st.sampled_from(["video", "audio"]),
    st.sampled_from(["H264", "VP8", "opus", "PCMU"]),
    st.binary(max_size=2000),
    st.integers(-(2**62), 2**62),
    st.fractions(min_value=Fraction(1, 10**6), max_value=1).filter(lambda f: f.denominator < 2**32),
    st.booleans(),
    st.booleans(),
)
def test_a_media_frame_crosses_a_link_unchanged(
    kind: str, codec: str, data: bytes, pts: int, time_base: Fraction, keyframe: bool, replay: bool
) -> None:
    frame = MediaFrame(kind, codec, data, pts, time_base, keyframe=keyframe, replay=replay)  # type: ignore[arg-type]
    ((got_kind, payload),) = wire.FrameReader(wire.MEDIA_MAX_BYTES).feed(wire.media_frame(frame))
    assert got_kind is wire.Kind.FRAME
    back = wire.parse_media_frame(payload)
    assert (back.kind, back.codec, back.data, back.pts, back.time_base) == (kind, codec, data, pts, time_base)
    assert (back.keyframe, back.replay) == (keyframe, replay)


@given(st.binary(max_size=100))
def test_a_bad_media_frame_is_a_wire_error(payload: bytes) -> None:
    try:
        wire.parse_media_frame(payload)
    except wire.WireError:
        pass


def test_the_first_claim_wins_and_every_worker_hears_of_it() -> None:
    directory = Directory()
    directory.hello(0, "/run/w0")
    directory.hello(1, "/run/w1")
    assert directory.claim(0, "cam") == [Notice(None, {"op": "owner", "name": "cam", "worker": 0})]
    assert directory.claim(1, "cam") == [Notice(1, {"op": "refused", "name": "cam", "owner": 0})]
    assert directory.release(1, "cam") == []  # not its name: nothing changes
    assert directory.owners == {"cam": 0}
    assert directory.release(0, "cam") == [Notice(None, {"op": "released", "name": "cam"})]
    assert directory.claim(1, "cam")[0].message["worker"] == 1


def test_a_dead_workers_names_are_freed_and_its_link_forgotten() -> None:
    directory = Directory()
    directory.hello(0, "/run/w0")
    directory.hello(1, "/run/w1")
    directory.claim(0, "a")
    directory.claim(0, "b")
    directory.claim(1, "c")
    notices = directory.worker_gone(0)
    assert notices[0] == Notice(None, {"op": "workers", "endpoints": {"1": "/run/w1"}})
    assert {n.message["name"] for n in notices[1:]} == {"a", "b"}
    assert directory.owners == {"c": 1}


def test_a_restarted_worker_learns_every_name_and_link() -> None:
    directory = Directory()
    directory.hello(0, "/run/w0")
    directory.claim(0, "a")
    replica = Replica(1)
    for notice in directory.hello(1, "/run/w1"):
        if notice.to in (None, 1):
            replica.apply(notice.message)
    assert replica.owner_elsewhere("a") == 0
    assert replica.endpoints == {0: "/run/w0", 1: "/run/w1"}


def test_a_replica_follows_the_directory_and_names_a_refusal() -> None:
    replica = Replica(1)
    replica.apply({"op": "owner", "name": "a", "worker": 0})
    replica.apply({"op": "owner", "name": "mine", "worker": 1})
    assert replica.owner_elsewhere("a") == 0
    assert replica.owner_elsewhere("mine") is None  # this worker's own
    assert replica.apply({"op": "refused", "name": "b", "owner": 0}) == "b"
    assert replica.owner_elsewhere("b") == 0
    replica.apply({"op": "released", "name": "a"})
    assert replica.owner_elsewhere("a") is None
    assert replica.apply({"op": "nonsense"}) is None


class Names:
    """A directory as a worker's registry sees it."""

    def __init__(self, elsewhere: set[str]) -> None:
        self.elsewhere = elsewhere
        self.log: list[tuple[str, str]] = []

    def owner_elsewhere(self, name: str) -> int | None:
        return 0 if name in self.elsewhere else None

    def claimed(self, name: str) -> None:
        self.log.append(("claimed", name))

    def released(self, name: str) -> None:
        self.log.append(("released", name))


def test_the_registry_refuses_a_name_held_elsewhere_and_reports_its_own() -> None:
    names = Names({"theirs"})
    registry = StreamRegistry(directory=names)
    with pytest.raises(StreamNameInUse):
        registry.claim("theirs")
    mine = registry.claim("mine")
    mirror = registry.claim("theirs", on_demand=True, mirror=True)  # a copy, not a claim
    assert registry.is_mirror(mirror) and not registry.is_mirror(mine)
    registry.release(mirror)
    registry.release(mine)
    assert names.log == [("claimed", "mine"), ("released", "mine")]


def test_each_worker_has_its_own_webrtc_and_rtsp_udp_ports_and_the_machines_broker() -> None:
    config = Config(
        webrtc_udp_port=8189, webrtc_tcp_port=8200, rtsp_udp_port=9000, mqtt="mqtt://x:1", sd_view_hub_key="k"
    )
    second = worker_config(config, 1)
    assert (second.webrtc_udp_port, second.webrtc_tcp_port, second.rtsp_udp_port) == (8190, 8201, 9002)
    # Where its SD view connects (the gateway of a worker builds no broker or DJI bridge).
    assert (second.mqtt, second.mqtt_broker, second.sd_view_hub_key) == ("mqtt://x:1", "127.0.0.1:1883", "k")
    assert worker_config(Config(webrtc_udp_port=0, rtsp_udp_port=0), 3).webrtc_udp_port == 0  # any port


def test_settings_cross_to_a_worker_unchanged() -> None:
    config = Config(aliases=("a=b",), stun_servers=("s:3478",), auth_secret="k", workers=2)
    assert config_from_message(config_message(config)) == config


def test_workers_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="'workers'"):
        load({"workers": -1}, environ={})
    with pytest.raises(ConfigError, match="need ports up to 65536"):
        load({"workers": 2, "webrtc_udp_port": 65535, "mqtt_broker": "off"}, environ={})
    assert load({"workers": 0, "mqtt_broker": "off"}, environ={}).worker_count >= 1
