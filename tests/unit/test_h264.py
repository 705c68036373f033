"""gateway.media.h264: NAL splitting, keyframes, SPS dimensions on real x264 output, and the
parameter-set cache that puts SPS/PPS in front of every IDR."""

from __future__ import annotations

import pytest

from gateway.media import h264
from gateway.media.h264 import NAL_AUD, NAL_IDR, NAL_PPS, NAL_SEI, NAL_SPS, START_CODE, ParameterSetCache
from tests.unit.helpers import VCL, access_units, annexb, nal_type

SC3 = b"\x00\x00\x01"
SC4 = b"\x00\x00\x00\x01"


def first_nal(data: bytes, kind: int) -> bytes:
    for nal in h264.iter_nal_units(data):
        if nal_type(nal) == kind:
            return nal
    raise AssertionError(f"no NAL unit of type {kind}")


# --- iter_nal_units / nal_types / is_keyframe -------------------------------------------------


def test_four_byte_start_codes() -> None:
    data = SC4 + b"\x67\x42\x00" + SC4 + b"\x68\xce" + SC4 + b"\x65\x88\x84"
    assert list(h264.iter_nal_units(data)) == [b"\x67\x42\x00", b"\x68\xce", b"\x65\x88\x84"]
    assert h264.nal_types(data) == [NAL_SPS, NAL_PPS, NAL_IDR]


def test_three_byte_start_codes() -> None:
    data = SC3 + b"\x09\x10" + SC3 + b"\x41\x9a\x01"
    assert list(h264.iter_nal_units(data)) == [b"\x09\x10", b"\x41\x9a\x01"]
    assert h264.nal_types(data) == [NAL_AUD, 1]


def test_mixed_start_codes_leave_no_trailing_zero() -> None:
    data = SC4 + b"\x67\xaa" + SC3 + b"\x68\xbb" + SC4 + b"\x06\xcc" + SC3 + b"\x65\xdd"
    assert list(h264.iter_nal_units(data)) == [b"\x67\xaa", b"\x68\xbb", b"\x06\xcc", b"\x65\xdd"]


def test_leading_garbage_and_empty_units_are_skipped() -> None:
    data = b"\xff\xee" + SC4 + SC4 + SC3 + b"\x65\x01"
    assert list(h264.iter_nal_units(data)) == [b"\x65\x01"]


def test_no_start_code() -> None:
    assert list(h264.iter_nal_units(b"\x65\x88\x84\x00")) == []
    assert list(h264.iter_nal_units(b"")) == []
    assert h264.nal_types(b"") == []
    assert not h264.is_keyframe(b"")


def test_single_unit_up_to_the_end() -> None:
    assert list(h264.iter_nal_units(SC3 + b"\x41")) == [b"\x41"]


def test_forbidden_and_nri_bits_are_masked() -> None:
    assert h264.nal_types(SC4 + b"\x25\x00" + SC4 + b"\x65\x00" + SC4 + b"\x01\x00") == [5, 5, 1]


def test_is_keyframe() -> None:
    assert h264.is_keyframe(SC4 + b"\x67\x00" + SC4 + b"\x68\x00" + SC4 + b"\x65\x00")
    assert h264.is_keyframe(SC3 + b"\x09\x10" + SC3 + b"\x25\x00")
    assert not h264.is_keyframe(SC4 + b"\x41\x9a")
    assert not h264.is_keyframe(SC4 + b"\x67\x00" + SC4 + b"\x68\x00")  # parameter sets only
    assert not h264.is_keyframe(SC4 + b"\x06\x05")


def test_real_stream_units(encoded: dict[str, bytes]) -> None:
    data = encoded["gop"]
    types = h264.nal_types(data)
    assert types[:4] == [NAL_SPS, NAL_PPS, NAL_SEI, NAL_IDR]
    assert types.count(NAL_IDR) == 3  # keyint=3, 7 frames
    assert types.count(1) == 4
    # every unit starts with a valid header and none ends with a start-code zero
    for nal in h264.iter_nal_units(data):
        assert nal[0] & 0x80 == 0
        assert nal[-1] != 0
    assert sum(len(n) for n in h264.iter_nal_units(data)) < len(data)


def test_real_stream_with_access_unit_delimiters(encoded: dict[str, bytes]) -> None:
    units = access_units(encoded["gop-aud"])
    assert len(units) == 7
    for unit in units:
        assert nal_type(unit[0]) == NAL_AUD
    keyframes = [h264.is_keyframe(annexb(u)) for u in units]
    assert keyframes == [True, False, False, True, False, False, True]


# --- sps_dimensions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size", "profile_idc"),
    [
        ("1280x720-baseline", (1280, 720), 66),
        ("320x240-baseline", (320, 240), 66),
        ("320x240-main", (320, 240), 77),
        ("640x360-high", (640, 360), 100),
        ("1920x1080-high", (1920, 1080), 100),
        ("1920x1080-interlaced", (1920, 1080), 100),
        ("854x480-high422", (854, 480), 122),
        ("1366x768-high444-cqm", (1366, 768), 244),
    ],
)
def test_sps_dimensions_of_real_streams(
    encoded: dict[str, bytes], name: str, size: tuple[int, int], profile_idc: int
) -> None:
    sps = first_nal(encoded[name], NAL_SPS)
    assert sps[1] == profile_idc, "x264 did not produce the profile the test is about"
    assert h264.sps_dimensions(sps) == size


def test_1080p_is_cropped_from_1088(encoded: dict[str, bytes]) -> None:
    sps = first_nal(encoded["1920x1080-high"], NAL_SPS)
    width, height = h264.sps_dimensions(sps)
    assert (width, height) == (1920, 1080)
    assert height % 16 != 0


def ue(value: int) -> str:
    """Exp-Golomb code of an unsigned value, as a bit string."""
    code = format(value + 1, "b")
    return "0" * (len(code) - 1) + code


def se(value: int) -> str:
    return ue(2 * value - 1 if value > 0 else -2 * value)


def rbsp(bits: str) -> bytes:
    bits += "1"  # rbsp_stop_one_bit
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def handmade_sps() -> bytes:
    """A baseline SPS for 1920x1080 with poc_type 1 and a huge offset_for_non_ref_pic, whose
    long run of zero bits needs emulation prevention."""
    bits = format(66, "08b") + "11000000" + format(40, "08b")  # profile, constraints, level
    bits += ue(0) + ue(0)  # sps id, log2_max_frame_num_minus4
    bits += ue(1) + "0" + se(1 << 28) + se(-5) + ue(2) + se(1) + se(-1)  # poc type 1
    bits += ue(1) + "0"  # max_num_ref_frames, gaps
    bits += ue(119) + ue(67) + "1" + "1"  # 120x68 MBs, frame_mbs_only, direct_8x8
    bits += "1" + ue(0) + ue(0) + ue(0) + ue(4)  # crop 8 lines at the bottom
    bits += "0"  # no VUI
    return b"\x67" + rbsp(bits)


def test_sps_with_emulation_prevention_bytes() -> None:
    raw = handmade_sps()
    escaped = h264.add_emulation_prevention(raw)
    assert b"\x00\x00\x03" in escaped and escaped != raw, "the test SPS must need escaping"
    assert h264._unescape(escaped) == raw
    assert h264.sps_dimensions(escaped) == (1920, 1080)
    # and it survives the trip through an Annex-B stream
    assert first_nal(START_CODE + escaped + START_CODE + b"\x68\xce", NAL_SPS) == escaped


def test_sps_poc_type_0_and_2() -> None:
    for poc in (ue(0) + ue(2), ue(2)):
        bits = format(77, "08b") + "01000000" + format(31, "08b") + ue(0) + ue(0) + poc
        bits += ue(3) + "0" + ue(79) + ue(44) + "1" + "1" + "0" + "0"
        assert h264.sps_dimensions(b"\x67" + rbsp(bits)) == (1280, 720)


def test_emulation_prevention_is_added() -> None:
    assert h264.add_emulation_prevention(b"\x00\x00\x01\x00\x00\x00\x00") == (
        b"\x00\x00\x03\x01\x00\x00\x03\x00\x00"
    )
    assert h264.add_emulation_prevention(b"\x00\x00\x04\x00\x05") == b"\x00\x00\x04\x00\x05"


def test_emulation_prevention_is_removed() -> None:
    assert h264._unescape(b"\x00\x00\x03\x01\x00\x00\x03\x00\x00\x03") == b"\x00\x00\x01\x00\x00\x00\x00"
    assert h264._unescape(b"\x12\x00\x03") == b"\x12\x00\x03"


def test_exp_golomb_code_too_long() -> None:
    bits = format(66, "08b") + "11000000" + format(30, "08b") + "0" * 40
    with pytest.raises(ValueError):
        h264.sps_dimensions(b"\x67" + rbsp(bits))


@pytest.mark.parametrize("cut", [1, 2, 4, 6])
def test_truncated_sps_raises_value_error(encoded: dict[str, bytes], cut: int) -> None:
    sps = first_nal(encoded["1280x720-baseline"], NAL_SPS)
    with pytest.raises(ValueError):
        h264.sps_dimensions(sps[:cut])


def test_empty_sps_raises_value_error() -> None:
    with pytest.raises(ValueError):
        h264.sps_dimensions(b"")


def test_garbage_sps_raises_value_error() -> None:
    with pytest.raises(ValueError):
        h264.sps_dimensions(b"\x67\x42\x00\x1e" + b"\x00" * 16)


# --- ParameterSetCache ----------------------------------------------------------------------------


def test_idr_without_parameter_sets_gets_the_cached_ones(encoded: dict[str, bytes]) -> None:
    units = access_units(encoded["gop"])
    cache = ParameterSetCache()
    first = annexb(units[0])
    out, key, dims = cache.process(first)
    assert (out, key, dims) == (first, True, (640, 360))
    # a delta frame passes untouched and reports no dimensions
    delta = annexb(units[1])
    assert cache.process(delta) == (delta, False, None)
    # the next IDR without its SPS/PPS gets them in front
    second_idr = [n for n in units[3] if nal_type(n) not in (NAL_SPS, NAL_PPS)]
    stripped = annexb(second_idr)
    out, key, dims = cache.process(stripped)
    assert key is True
    assert dims is None
    assert h264.nal_types(out)[:2] == [NAL_SPS, NAL_PPS]
    assert list(h264.iter_nal_units(out))[:2] == [cache.sps, cache.pps]
    assert out.endswith(stripped)
    assert cache.sps is not None and cache.pps is not None
    assert out == START_CODE + cache.sps + START_CODE + cache.pps + stripped


def test_idr_with_parameter_sets_is_unchanged(encoded: dict[str, bytes]) -> None:
    cache = ParameterSetCache()
    for unit in access_units(encoded["gop"]):
        data = annexb(unit)
        out, _, _ = cache.process(data)
        assert out == data


def test_idr_missing_only_the_pps() -> None:
    cache = ParameterSetCache()
    cache.process(SC4 + b"\x67\xaa" + SC4 + b"\x68\xbb" + SC4 + b"\x65\x01")
    out, key, _ = cache.process(SC4 + b"\x67\xaa" + SC4 + b"\x65\x02")
    assert key
    assert list(h264.iter_nal_units(out)) == [b"\x67\xaa", b"\x68\xbb", b"\x65\x02"]


def test_idr_missing_only_the_sps() -> None:
    cache = ParameterSetCache()
    cache.process(SC4 + b"\x67\xaa" + SC4 + b"\x68\xbb" + SC4 + b"\x65\x01")
    out, _, _ = cache.process(SC4 + b"\x68\xcc" + SC4 + b"\x65\x02")
    assert list(h264.iter_nal_units(out)) == [b"\x67\xaa", b"\x68\xcc", b"\x65\x02"]
    assert cache.pps == b"\x68\xcc"


def test_nothing_cached_yet_leaves_the_idr_alone() -> None:
    cache = ParameterSetCache()
    idr = SC4 + b"\x65\x88\x84"
    assert cache.process(idr) == (idr, True, None)
    # only a PPS seen so far: still nothing to insert
    cache.process(SC4 + b"\x68\xbb")
    assert cache.process(idr)[0] == idr


def test_delta_frames_are_never_changed() -> None:
    cache = ParameterSetCache()
    cache.process(SC4 + b"\x67\xaa" + SC4 + b"\x68\xbb")
    delta = SC3 + b"\x41\x9a\x01"
    assert cache.process(delta) == (delta, False, None)


def test_latest_parameter_sets_win(encoded: dict[str, bytes]) -> None:
    cache = ParameterSetCache()
    small = access_units(encoded["320x240-baseline"])[0]
    large = access_units(encoded["1920x1080-high"])[0]
    assert cache.process(annexb(small))[2] == (320, 240)
    assert cache.process(annexb(large))[2] == (1920, 1080)
    idr_only = annexb([n for n in large if nal_type(n) in VCL])
    out, _, _ = cache.process(idr_only)
    assert h264.sps_dimensions(first_nal(out, NAL_SPS)) == (1920, 1080)


def test_a_repeated_sps_is_parsed_once_and_a_new_one_again(
    encoded: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The picture size is read from each distinct SPS once (encoders repeat the same SPS
    before every IDR); a different SPS, and the first one again after it, are read anew."""
    parsed: list[bytes] = []
    real = h264.sps_dimensions

    def counting(sps: bytes) -> tuple[int, int]:
        parsed.append(sps)
        return real(sps)

    monkeypatch.setattr(h264, "sps_dimensions", counting)
    cache = ParameterSetCache()
    small = annexb(access_units(encoded["320x240-baseline"])[0])
    large = annexb(access_units(encoded["1920x1080-high"])[0])
    sizes = [cache.process(unit)[2] for unit in (small, small, small, large, large, small)]
    assert sizes == [(320, 240)] * 3 + [(1920, 1080)] * 2 + [(320, 240)]
    assert [real(sps) for sps in parsed] == [(320, 240), (1920, 1080), (320, 240)]


def test_unparsable_sps_is_cached_without_dimensions() -> None:
    cache = ParameterSetCache()
    out, key, dims = cache.process(SC4 + b"\x67" + SC4 + b"\x68\xbb" + SC4 + b"\x65\x01")
    assert (key, dims) == (True, None)
    assert cache.sps == b"\x67"


def test_parameter_sets_go_after_the_access_unit_delimiter(encoded: dict[str, bytes]) -> None:
    units = access_units(encoded["gop-aud"])
    cache = ParameterSetCache()
    cache.process(annexb(units[0]))
    idr = [n for n in units[3] if nal_type(n) not in (NAL_SPS, NAL_PPS)]
    assert [nal_type(n) for n in idr] == [NAL_AUD, NAL_IDR]
    out, _, _ = cache.process(annexb(idr))
    # H.264 7.4.1.2.3: an access unit delimiter, when present, is the first NAL unit.
    assert h264.nal_types(out) == [NAL_AUD, NAL_SPS, NAL_PPS, NAL_IDR]


# --- SEI timestamps -----------------------------------------------------------------------------


def escaped_correctly(nal: bytes) -> bool:
    """No start-code prefix (00 00 0x, x <= 2) and every 00 00 03 followed by a byte <= 3."""
    for i in range(len(nal) - 2):
        if nal[i] == 0 and nal[i + 1] == 0:
            if nal[i + 2] <= 2:
                return False
            if nal[i + 2] == 3 and i + 3 < len(nal) and nal[i + 3] > 3:
                return False
    return True


def sei_message(kind: int, payload: bytes) -> bytes:
    """One SEI message (unescaped): type and size as runs of 0xFF plus a last byte."""

    def field(value: int) -> bytes:
        return b"\xff" * (value // 255) + bytes([value % 255])

    return field(kind) + field(len(payload)) + payload


def sei_nal(*messages: bytes) -> bytes:
    return bytes([NAL_SEI]) + h264.add_emulation_prevention(b"".join(messages) + b"\x80")


@pytest.mark.parametrize(
    "ns",
    [
        0,  # eight zero bytes: emulation prevention twice over
        1,
        0x0000_0100_0000_0200,
        0x0000_0300_0000_0003,
        1_795_332_453_001_389_925,
        (1 << 64) - 1,
    ],
)
def test_sei_timestamp_round_trip(ns: int) -> None:
    nal = h264.sei_timestamp_nal(ns)
    assert nal_type(nal) == NAL_SEI
    assert escaped_correctly(nal[1:])
    assert list(h264.iter_nal_units(START_CODE + nal)) == [nal]
    assert h264.read_sei_timestamp(START_CODE + nal) == ns


def test_sei_timestamp_escapes_zero_runs() -> None:
    nal = h264.sei_timestamp_nal(0)
    assert b"\x00\x00\x03" in nal
    assert len(nal) > 1 + 2 + 16 + 8 + 1  # header, type, size, UUID, timestamp, trailing bits


def test_sei_timestamp_out_of_range() -> None:
    for ns in (-1, 1 << 64):
        with pytest.raises(ValueError):
            h264.sei_timestamp_nal(ns)


def test_sei_goes_after_delimiter_and_parameter_sets_before_the_slice(encoded: dict[str, bytes]) -> None:
    units = access_units(encoded["gop-aud"])
    key = annexb(units[0])
    types = h264.nal_types(key)
    assert types[0] == NAL_AUD and types[-1] == NAL_IDR
    stamped = h264.insert_sei(key, h264.sei_timestamp_nal(42))
    assert h264.nal_types(stamped) == [*types[:-1], NAL_SEI, NAL_IDR]
    assert h264.read_sei_timestamp(stamped) == 42
    delta = annexb(units[1])
    stamped = h264.insert_sei(delta, h264.sei_timestamp_nal(43))
    assert h264.nal_types(stamped) == [NAL_AUD, NAL_SEI, 1]
    assert h264.read_sei_timestamp(stamped) == 43


def test_no_sei_timestamp() -> None:
    assert h264.read_sei_timestamp(b"") is None
    assert h264.read_sei_timestamp(SC4 + b"\x67\xaa" + SC4 + b"\x68\xbb" + SC4 + b"\x65\x01") is None


def test_x264_user_data_is_not_a_timestamp(encoded: dict[str, bytes]) -> None:
    first = annexb(access_units(encoded["320x240-baseline"])[0])
    assert NAL_SEI in h264.nal_types(first)  # x264 writes its settings as user data
    assert h264.read_sei_timestamp(first) is None


def test_other_sei_messages_are_skipped() -> None:
    ours = h264.SEI_TIMESTAMP_UUID + (7).to_bytes(8, "big")
    other_uuid = bytes(range(16)) + (8).to_bytes(8, "big")
    recovery_point = b"\x84"  # payload type 6
    big = b"\x00" * 300  # payload type 300, size 300: both need a 0xFF run
    nal = sei_nal(
        sei_message(6, recovery_point),
        sei_message(5, other_uuid),
        sei_message(300, big),
        sei_message(5, ours),
    )
    assert h264.read_sei_timestamp(SC4 + nal + SC4 + b"\x65\x01") == 7
    # Our UUID with another length, or under another payload type, is not ours.
    assert h264.read_sei_timestamp(SC4 + sei_nal(sei_message(5, ours + b"\x00"))) is None
    assert h264.read_sei_timestamp(SC4 + sei_nal(sei_message(4, ours))) is None


def test_a_later_sei_nal_unit_is_found() -> None:
    other = sei_nal(sei_message(6, b"\x84"))
    data = SC4 + b"\x09\x10" + SC4 + other + SC4 + h264.sei_timestamp_nal(9) + SC4 + b"\x41\x9a"
    assert h264.read_sei_timestamp(data) == 9


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no message at all
        b"\x05",  # a type and no size
        b"\x05\x18" + h264.SEI_TIMESTAMP_UUID,  # payload cut short
        b"\xff\xff",  # a type running off the end
    ],
)
def test_malformed_sei_is_ignored(body: bytes) -> None:
    assert h264.read_sei_timestamp(SC4 + bytes([NAL_SEI]) + body + SC4 + b"\x65\x01") is None


# --- parameter_sets / find_parameter_sets ----------------------------------------------------


def test_parameter_sets_of_an_access_unit() -> None:
    sps, pps = b"\x67\x42\x00\x1e", b"\x68\xce\x38\x80"
    keyframe = SC4 + b"\x09\x10" + SC4 + sps + SC3 + pps + SC4 + b"\x65\x88\x84"
    assert h264.parameter_sets(keyframe) == (sps, pps)
    assert h264.parameter_sets(SC4 + b"\x41\x9a") == (None, None)
    assert h264.parameter_sets(b"") == (None, None)


def test_find_parameter_sets_takes_the_first_of_each_and_skips_empty_units() -> None:
    sps1, sps2, pps = b"\x67\x01", b"\x67\x02", b"\x68\x03"
    assert h264.find_parameter_sets([b"", pps, sps1, sps2]) == (sps1, pps)
    assert h264.find_parameter_sets([sps1]) == (sps1, None)
