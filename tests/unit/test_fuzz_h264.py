"""Property tests of the H.264 parsing (gateway/media/h264.py) against hostile bytes.

`sps_dimensions` returns a positive size or raises ValueError for any bytes; the NAL unit
splitter, the parameter-set cache and the SEI timestamp reader never raise. SPS written
from random fields parse back to their size, and SEI timestamps and NAL units read back.
Budget: the Hypothesis profile (tests/unit/conftest.py).
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.media import h264


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, count: int, value: int) -> None:
        self.bits += [(value >> (count - 1 - i)) & 1 for i in range(count)]

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() - 1, 0)
        self.u(code.bit_length(), code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def rbsp(self) -> bytes:
        bits = [*self.bits, 1]  # rbsp_stop_one_bit, then zeros to a byte
        bits += [0] * (-len(bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


@st.composite
def sps(draw: st.DrawFn) -> tuple[bytes, tuple[int, int]]:
    """An SPS NAL unit from random fields, and the picture size it gives."""
    w = BitWriter()
    profile = draw(st.sampled_from([66, 77, 88, 100, 110, 122, 244]))
    w.u(8, profile)
    w.u(16, draw(st.integers(0, 0xFFFF)))  # constraint flags, level
    w.ue(draw(st.integers(0, 31)))  # seq_parameter_set_id
    chroma, separate = 1, 0
    if profile >= 100:
        chroma = draw(st.integers(0, 3))
        w.ue(chroma)
        if chroma == 3:
            separate = draw(st.integers(0, 1))
            w.u(1, separate)
        w.ue(draw(st.integers(0, 6)))
        w.ue(draw(st.integers(0, 6)))
        w.u(1, 0)
        scaling = draw(st.booleans())
        w.u(1, int(scaling))
        if scaling:
            for i in range(8 if chroma != 3 else 12):  # chroma_format_idc, not ChromaArrayType
                present = draw(st.booleans())
                w.u(1, int(present))
                last = following = 8
                for _ in range(16 if i < 6 and present else 64 if present else 0):
                    if following == 0:
                        break  # the rest of the list repeats the last scale: no more deltas
                    delta = draw(st.integers(-128, 127))
                    w.se(delta)
                    following = (last + delta + 256) % 256
                    last = following or last
    w.ue(draw(st.integers(0, 12)))  # log2_max_frame_num_minus4
    poc_type = draw(st.integers(0, 2))
    w.ue(poc_type)
    if poc_type == 0:
        w.ue(draw(st.integers(0, 12)))
    elif poc_type == 1:
        w.u(1, 0)
        w.se(draw(st.integers(-100, 100)))
        w.se(draw(st.integers(-100, 100)))
        offsets = draw(st.lists(st.integers(-100, 100), max_size=5))
        w.ue(len(offsets))
        for offset in offsets:
            w.se(offset)
    w.ue(draw(st.integers(0, 16)))  # max_num_ref_frames
    w.u(1, 0)
    width_mbs, height_units = draw(st.integers(1, 256)), draw(st.integers(1, 135))
    w.ue(width_mbs - 1)
    w.ue(height_units - 1)
    frame_mbs_only = draw(st.integers(0, 1))
    w.u(1, frame_mbs_only)
    if not frame_mbs_only:
        w.u(1, 0)
    w.u(1, 1)  # direct_8x8_inference_flag
    if profile >= 100 and chroma == 3 and separate:
        chroma = 0  # ChromaArrayType 0: the colour planes are coded as monochrome pictures
    sub_w = 2 if chroma in (1, 2) else 1
    sub_h = 2 if chroma == 1 else 1
    unit_x, unit_y = (sub_w, sub_h * (2 - frame_mbs_only)) if chroma else (1, 2 - frame_mbs_only)
    coded_w, coded_h = width_mbs * 16, (2 - frame_mbs_only) * height_units * 16
    crop_x = draw(st.integers(0, (coded_w - 1) // unit_x))
    crop_y = draw(st.integers(0, (coded_h - 1) // unit_y))
    crop = bool(crop_x or crop_y)
    w.u(1, int(crop))
    if crop:
        w.ue(crop_x // 2)
        w.ue(crop_x - crop_x // 2)
        w.ue(crop_y // 2)
        w.ue(crop_y - crop_y // 2)
    w.u(1, 0)  # vui_parameters_present_flag
    nal = bytes([0x67]) + h264.add_emulation_prevention(w.rbsp())
    return nal, (coded_w - unit_x * crop_x, coded_h - unit_y * crop_y)


@given(sps())
def test_sps_round_trip(case: tuple[bytes, tuple[int, int]]) -> None:
    nal, size = case
    assert h264.sps_dimensions(nal) == size
    assert h264.ParameterSetCache().process(h264.START_CODE + nal)[2] == size


def damaged(data: bytes, draw_positions: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in draw_positions:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


@given(
    st.binary(max_size=60) | sps().map(lambda case: case[0]),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 80),
)
@example(b"", [], 0)
@example(b"\x67", [], 0)
@example(b"\x67\x64" + bytes(30), [], 0)  # exp-Golomb codes of 32+ zeros
@example(b"\x67\x42\x00\x1f\xff\xff\xff\xff", [], 0)  # sizes that overflow nothing in Python
def test_sps_dimensions_raises_only_value_error(data: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    nal = damaged(data, flips)
    nal = nal[: len(nal) - cut] if cut < len(nal) else nal
    try:
        width, height = h264.sps_dimensions(nal)
    except ValueError:
        return
    assert width > 0 and height > 0


@given(st.binary(max_size=300))
@example(b"\x00\x00\x01")
@example(b"\x00\x00\x00\x01\x65\x00\x00\x01\x06\xff\xff")
def test_annexb_helpers_never_raise(data: bytes) -> None:
    units = list(h264.iter_nal_units(data))
    assert all(units)
    cache = h264.ParameterSetCache()
    for access_unit in (data, h264.START_CODE + b"\x67" + data, h264.START_CODE + b"\x65" + data):
        out, _, _ = cache.process(access_unit)
        h264.read_sei_timestamp(out)
        h264.insert_sei(out, h264.sei_timestamp_nal(1))


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6))
def test_nal_units_round_trip(bodies: list[bytes]) -> None:
    nals = [bytes([0x61]) + h264.add_emulation_prevention(body) + b"\x80" for body in bodies]
    assert list(h264.iter_nal_units(b"".join(h264.START_CODE + nal for nal in nals))) == nals


@given(st.integers(0, 2**64 - 1), st.lists(st.binary(min_size=1, max_size=30), max_size=3))
def test_sei_timestamp_round_trip(ns: int, bodies: list[bytes]) -> None:
    """The timestamp SEI goes in before the first slice and reads back, whatever it is."""
    nals = [bytes([0x65]) + h264.add_emulation_prevention(body) + b"\x80" for body in bodies]
    access_unit = b"".join(h264.START_CODE + nal for nal in nals)
    stamped = h264.insert_sei(access_unit, h264.sei_timestamp_nal(ns))
    assert h264.read_sei_timestamp(stamped) == ns
