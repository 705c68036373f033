"""The sans-I/O parts of `--workers`: the local links' framing, the media frame encoding,
the stream-name directory and its replicas, per-worker settings, and the registry's use of
the directory."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cluster import wire
from gateway.cluster.directory import (
    INFO_OWNER_REFUSED,
    INFO_TAKEOVER_UNDER_WAY,
    INFO_TAKER_GONE,
    Directory,
    Notice,
    Replica,
    Takeover,
)
from gateway.cluster.supervisor import config_from_message, config_message, worker_config
from gateway.config import Config, ConfigError, load
from gateway.media.registry import StreamNameInUse, StreamRegistry
from gateway.media.stream import NO_FEEDBACK, MediaFrame, SourceFeedback

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
    """A directory as a worker's registry sees it (a takeover is granted for ``handed``)."""

    def __init__(self, elsewhere: set[str], handed: set[str] | None = None) -> None:
        self.elsewhere = elsewhere
        self.handed = handed or set()
        self.log: list[tuple[str, str]] = []

    async def take_over(self, name: str) -> None:
        self.log.append(("take_over", name))
        if name not in self.handed:
            raise StreamNameInUse(name)
        self.elsewhere.discard(name)

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


def cam_held_by_0() -> Directory:
    """Three workers; worker 0 holds "cam"."""
    directory = Directory()
    for worker in range(3):
        directory.hello(worker, f"/run/w{worker}")
    directory.claim(0, "cam")
    return directory


def test_a_takeover_asks_the_owner_then_moves_the_name_in_one_step() -> None:
    directory = cam_held_by_0()
    assert directory.take_over(1, "cam") == Takeover(False, [], ask=0)
    # While the owner is asked, the name is still its: nobody else gets it.
    assert directory.claim(2, "cam") == [Notice(2, {"op": "refused", "name": "cam", "owner": 0})]
    assert directory.take_over(2, "cam") == Takeover(False, [], info=INFO_TAKEOVER_UNDER_WAY)
    moved = directory.handed_over(1, "cam", 0, agreed=True)
    assert moved == Takeover(True, [Notice(None, {"op": "owner", "name": "cam", "worker": 1, "from": 0})])
    assert directory.owners == {"cam": 1} and directory.handovers == {}
    # Back again: the new owner is asked in its turn.
    assert directory.take_over(0, "cam").ask == 1


def test_an_owner_whose_stream_has_a_source_keeps_the_name() -> None:
    directory = cam_held_by_0()
    directory.take_over(1, "cam")
    refused = directory.handed_over(1, "cam", 0, agreed=False)
    # The owner hears that it keeps the name (had it let its stream go, it takes it back).
    assert refused == Takeover(
        False, [Notice(0, {"op": "owner", "name": "cam", "worker": 0})], info=INFO_OWNER_REFUSED
    )
    assert directory.owners == {"cam": 0} and directory.handovers == {}
    assert directory.take_over(1, "cam").ask == 0  # a later push may try again


def test_an_owner_that_did_not_answer_keeps_the_name_and_the_push_hears_why() -> None:
    directory = cam_held_by_0()
    directory.take_over(1, "cam")
    refused = directory.handed_over(1, "cam", 0, agreed=False, info="worker 0 did not answer")
    assert (refused.granted, refused.info) == (False, "worker 0 did not answer")
    assert refused.notices == [Notice(0, {"op": "owner", "name": "cam", "worker": 0})]
    assert directory.owners == {"cam": 0} and directory.handovers == {}


def test_an_owner_gone_midway_leaves_no_stuck_name() -> None:
    # Its answer fails first (its channel closed), then its names are freed.
    directory = cam_held_by_0()
    directory.take_over(1, "cam")
    refused = directory.handed_over(1, "cam", 0, agreed=False, info="worker 0 went away")
    assert not refused.granted and refused.info == "worker 0 went away"
    directory.worker_gone(0)
    assert directory.owners == {} and directory.handovers == {}
    assert directory.claim(1, "cam")[0].message == {"op": "owner", "name": "cam", "worker": 1}
    # Freed before its answer failed: the name is free, the push takes it.
    directory = cam_held_by_0()
    directory.take_over(1, "cam")
    directory.worker_gone(0)
    assert directory.handed_over(1, "cam", 0, agreed=False).granted
    assert directory.owners == {"cam": 1}


def test_a_taker_gone_midway_gives_the_owner_its_stream_back() -> None:
    directory = cam_held_by_0()
    directory.take_over(1, "cam")
    directory.worker_gone(1)
    back = directory.handed_over(1, "cam", 0, agreed=True)
    assert back == Takeover(
        False, [Notice(0, {"op": "owner", "name": "cam", "worker": 0})], info=INFO_TAKER_GONE
    )
    assert directory.owners == {"cam": 0}


def test_two_takeovers_at_once_one_wins_the_other_is_refused() -> None:
    directory = cam_held_by_0()
    first, second = directory.take_over(1, "cam"), directory.take_over(2, "cam")
    assert first.ask == 0 and second == Takeover(False, [], info=INFO_TAKEOVER_UNDER_WAY)
    # The refused one's answer never comes; a late one for it changes nothing.
    assert directory.handed_over(1, "cam", 0, agreed=True).granted
    assert not directory.handed_over(2, "cam", 0, agreed=True).granted
    assert directory.owners == {"cam": 1}


def test_a_free_or_own_name_is_taken_at_once() -> None:
    directory = cam_held_by_0()
    assert directory.take_over(1, "free") == Takeover(
        True, [Notice(None, {"op": "owner", "name": "free", "worker": 1})]
    )
    assert directory.take_over(0, "cam").granted and directory.owners["cam"] == 0


ops = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["claim", "release", "take", "gone"]), st.integers(0, 2), st.sampled_from("ab")
        ),
        st.tuples(st.just("answer"), st.integers(0, 3), st.booleans()),
    ),
    max_size=40,
)


@given(ops)
def test_replicas_hearing_the_directory_agree_with_it_whatever_happens(
    steps: list[tuple[str, int, object]],
) -> None:
    """Claims, releases, takeovers (answered in any order, or never), workers dying and
    coming back: every name has one live owner, a takeover is never stuck, and a replica
    that hears the directory's notices holds what the directory holds."""
    directory = Directory()
    replicas = {w: Replica(w) for w in range(3)}
    pending: list[tuple[int, str, int]] = []  # taker, name, owner asked

    def send(notices: list[Notice]) -> None:
        for notice in notices:
            for worker, replica in replicas.items():
                if notice.to in (None, worker) and worker in directory.endpoints:
                    replica.apply(notice.message)

    for worker in range(3):
        send(directory.hello(worker, f"/run/w{worker}"))
    for op, worker, arg in steps:
        if op == "claim":
            send(directory.claim(worker, str(arg)))
        elif op == "release":
            send(directory.release(worker, str(arg)))
        elif op == "take":
            step = directory.take_over(worker, str(arg))
            send(step.notices)
            if step.ask is not None:
                pending.append((worker, str(arg), step.ask))
        elif op == "gone":
            send(directory.worker_gone(worker))
            replicas[worker] = Replica(worker)
            send(directory.hello(worker, f"/run/w{worker}"))
        elif pending:
            taker, name, owner = pending.pop(worker % len(pending))
            send(directory.handed_over(taker, name, owner, agreed=bool(arg)).notices)
        assert set(directory.owners.values()) <= set(directory.endpoints)
        assert set(directory.handovers) == {name for _, name, _ in pending}
    for taker, name, owner in pending:
        send(directory.handed_over(taker, name, owner, agreed=False).notices)
    assert directory.handovers == {}
    for replica in replicas.values():
        assert replica.owners == directory.owners


async def test_a_returning_push_takes_over_a_name_another_worker_holds_without_a_source() -> None:
    names = Names({"cam", "busy"}, handed={"cam"})
    registry = StreamRegistry(directory=names)
    with pytest.raises(StreamNameInUse):  # not a returning push: refused here, nobody asked
        await registry.claim_push("cam", resume=False, on_demand=True)
    assert names.log == []
    stream = await registry.claim_push("cam", resume=True, on_demand=True)
    assert registry.find("cam") is stream and not registry.is_mirror(stream)
    with pytest.raises(StreamNameInUse):  # its owner's stream has a source
        await registry.claim_push("busy", resume=True, on_demand=True)
    assert names.log == [("take_over", "cam"), ("claimed", "cam"), ("take_over", "busy")]


class Feed:
    def request_keyframe(self) -> None:
        pass

    async def feedback(self) -> SourceFeedback:
        return NO_FEEDBACK


def test_a_stream_handed_over_is_a_mirror_until_its_name_comes_back() -> None:
    names = Names(set())
    registry = StreamRegistry(directory=names)
    stream = registry.claim("cam")
    push = Feed()
    stream.attach_source(push, "rtmp")
    assert registry.resumable("cam") is None  # its push is live
    stream.detach_source(push)
    assert registry.resumable("cam") is stream
    registry.hand_over(stream)
    assert registry.is_mirror(stream) and registry.resumable("cam") is None
    with pytest.raises(StreamNameInUse):  # a push here may not take a mirror
        registry.claim("cam", resume=True, on_demand=True)
    stream.attach_source(Feed(), "worker 1")  # fed from the new owner
    registry.adopt(stream)  # the name came back (a handover undone, or taken over again)
    assert not registry.is_mirror(stream) and stream.source is None
    assert registry.claim("cam", resume=True, on_demand=True) is stream
    assert names.log == [("claimed", "cam")]  # the directory moved the name, not the registry
