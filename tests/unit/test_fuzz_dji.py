"""Property tests of the DJI Cloud API parsers (gateway/dji/protocol.py) against hostile input.

For any bytes, text or JSON value, the envelope parser and the parsers of what envelopes
carry (services replies, live_capacity, live_status, update_topo, osd telemetry, video ids,
qualities, topics) return or raise DjiProtocolError, never anything else; an osd sample
always serialises, bounded. The builders read back the
same. Budget: the Hypothesis profile (tests/unit/conftest.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.dji import protocol as p
from gateway.dji.osd import parse_osd

# JSON values as orjson writes them (64-bit integers, finite floats).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=25,
)
serials = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=p.MAX_SN)
indexes = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=32)
ENVELOPE_KEYS = ["tid", "bid", "method", "data", "timestamp", "gateway", "need_reply"]
# Objects with the envelope's keys, each with any JSON value (or a plausible one).
envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "tid": st.text(max_size=8) | json_values,
        "bid": st.text(max_size=8) | json_values,
        "method": st.sampled_from(["live_start_push", "update_topo", ""]) | json_values,
        "data": st.dictionaries(st.text(max_size=8), json_values, max_size=4) | json_values,
        "timestamp": st.integers(-(2**63), 2**63 - 1) | json_values,
        "gateway": serials | json_values,
        "need_reply": st.sampled_from([0, 1, True, False, 2, 1.0]) | json_values,
    },
)


def parse_everything(payload: bytes | str) -> None:
    """The envelope, then every parser that reads from one, as the bridge calls them."""
    try:
        envelope = p.parse_envelope(payload)
    except p.DjiProtocolError:
        return
    for parse in (
        lambda: p.parse_service_reply(envelope),
        lambda: p.parse_update_topo("GW1", envelope),
        lambda: p.parse_live_capacity(envelope.data.get("live_capacity")),
        lambda: p.parse_live_status(envelope.data.get("live_status")),
        lambda: check_osd(envelope),
    ):
        try:
            parse()
        except p.DjiProtocolError:
            pass


def check_osd(envelope: p.Envelope) -> None:
    """As the registry calls it, for an aircraft and for the gateway's own osd."""
    for sn in ("AIRCRAFT1", "GW1"):
        sample = parse_osd(sn, envelope, received_at_ms=1, gateway_sn="GW1")
        assert len(orjson.dumps(sample.to_json())) < 64 * 1024
        sample.gauges()


@given(st.binary(max_size=200) | st.text(max_size=200))
@example(b"[" * 5000 + b"]" * 5000)  # nested past orjson's depth limit
@example('{"tid": "\ud800"}')  # a lone surrogate in a str
@example(b'{"tid":"t","bid":"b","timestamp":1e400}')
@example(b"x" * (p.MAX_PAYLOAD_BYTES + 1))
def test_envelope_parser_raises_only_its_error_for_any_bytes(payload: bytes | str) -> None:
    parse_everything(payload)


@given(json_values | envelope_like)
def test_envelope_parsers_raise_only_their_error_for_any_json(value: Any) -> None:
    parse_everything(orjson.dumps(value))


@given(json_values)
@example({"device_list": [{"sn": "A", "camera_list": [{"camera_index": "0", "video_list": [{}]}]}]})
@example([{"video_id": "A/0/0", "video_quality": 2**63, "status": [1]}])
def test_state_parsers_raise_only_their_error(value: Any) -> None:
    for parse in (p.parse_live_capacity, p.parse_live_status, p.parse_video_quality):
        try:
            parse(value)
        except p.DjiProtocolError:
            pass


@given(
    st.text(max_size=80)
    | st.lists(st.sampled_from(["sys", "thing", "product", "status", "osd", "x"])).map("/".join)
)
def test_topics_and_video_ids_never_raise_anything_else(text: str) -> None:
    topic = p.parse_topic(text)
    assert topic is None or p.valid_sn(topic.sn)
    try:
        video_id = p.VideoId.parse(text)
    except p.DjiProtocolError:
        return
    assert str(video_id) == text


@given(
    st.text(min_size=1, max_size=20),
    st.text(min_size=1, max_size=20),
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    st.integers(1, 2**63 - 1),
    st.none() | serials,
)
def test_envelope_round_trip(
    tid: str, bid: str, method: str, data: dict[str, Any], timestamp: int, gateway: str | None
) -> None:
    envelope = p.Envelope(tid, bid, method, data, timestamp, gateway)
    assert p.parse_envelope(p.encode(envelope)) == envelope


videos = st.builds(
    p.Video,
    st.builds(p.VideoId, serials, indexes, indexes),
    st.text(max_size=10),
    st.lists(st.text(max_size=10), max_size=3).map(tuple),
)


@given(st.lists(videos, max_size=6, unique_by=lambda v: v.video_id), st.integers(0, 10))
def test_live_capacity_round_trip(found: list[p.Video], coexist: int) -> None:
    # The data groups videos by device and camera: compare in that order.
    capacity = p.LiveCapacity(tuple(found), coexist)
    parsed = p.parse_live_capacity(orjson.loads(orjson.dumps(p.live_capacity_data(capacity))))
    assert sorted(parsed.videos, key=str) == sorted(found, key=str)
    assert parsed.coexist_max == coexist


@given(serials, st.text(max_size=10), st.integers(0, 100), st.lists(serials, max_size=4).map(tuple))
def test_update_topo_round_trip(gateway: str, domain: str, kind: int, subs: tuple[str, ...]) -> None:
    topology = p.Topology(gateway, domain, kind, subs)
    envelope = p.parse_envelope(p.encode(p.Envelope("t", "b", "update_topo", p.update_topo_data(topology))))
    assert p.parse_update_topo(gateway, envelope) == topology


@given(serials, indexes, indexes)
def test_video_id_round_trip(sn: str, camera: str, video: str) -> None:
    video_id = p.VideoId(sn, camera, video)
    assert p.VideoId.parse(str(video_id)) == video_id


osd_keys = st.sampled_from(
    ["latitude", "height", "attitude_head", "battery", "mode_code", "wireless_link", "network_state"]
    + ["capacity_percent", "cameras", "39-0-7", "53-0-0", "liveview_world_region", "x"]
)


@given(st.dictionaries(osd_keys | st.text(max_size=8), json_values, max_size=12))
@example({"cameras": [{"payload_index": "39-0-7", "liveview_world_region": {"left": True}}]})
@example({"39-0-7": {"gimbal_pitch": 2**63}, "battery": {"capacity_percent": 1e308}})
def test_osd_parser_gives_a_sample_for_any_data(data: dict[str, Any]) -> None:
    try:
        envelope = p.parse_envelope(orjson.dumps({"tid": "t", "bid": "b", "data": data}))
    except p.DjiProtocolError:
        return
    check_osd(envelope)
