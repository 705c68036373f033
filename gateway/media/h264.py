"""H.264 Annex-B helpers: NAL unit splitting, keyframe detection, SPS dimensions, and
making sure SPS/PPS precede every IDR. Pure functions over bytes."""

from __future__ import annotations

from collections.abc import Iterator

NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
START_CODE = b"\x00\x00\x00\x01"


def iter_nal_units(data: bytes) -> Iterator[bytes]:
    """Yield the NAL units (without start codes) of an Annex-B byte string."""
    n = len(data)
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < n:
        start = i + 3
        j = data.find(b"\x00\x00\x01", start)
        if j < 0:
            end = n
        else:
            end = j - 1 if data[j - 1] == 0 else j
        # a 4-byte start code leaves a zero at the end of the previous unit
        nal = data[start:end]
        if nal:
            yield nal
        i = j


def nal_types(data: bytes) -> list[int]:
    return [nal[0] & 0x1F for nal in iter_nal_units(data)]


def is_keyframe(data: bytes) -> bool:
    return NAL_IDR in nal_types(data)


class _BitReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.pos >> 3
        if byte >= len(self.data):
            raise ValueError("SPS truncated")
        value = (self.data[byte] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code in SPS")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def _unescape(nal: bytes) -> bytes:
    """Remove emulation-prevention bytes (00 00 03 -> 00 00)."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _skip_scaling_list(reader: _BitReader, size: int) -> None:
    last, nxt = 8, 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + reader.se() + 256) % 256
        last = nxt if nxt != 0 else last


def sps_dimensions(sps: bytes) -> tuple[int, int]:
    """Width and height in pixels from an SPS NAL unit (with its one-byte header)."""
    r = _BitReader(_unescape(sps[1:]))
    profile_idc = r.bits(8)
    r.bits(16)  # constraint flags, level_idc
    r.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_colour_plane = 0
    if profile_idc in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma_format_idc = r.ue()
        if chroma_format_idc == 3:
            separate_colour_plane = r.bit()
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.bit()  # qpprime_y_zero_transform_bypass_flag
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.bit():
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_map_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()  # mb_adaptive_frame_field_flag
    r.bit()  # direct_8x8_inference_flag
    crop_left = crop_right = crop_top = crop_bottom = 0
    if r.bit():  # frame_cropping_flag
        crop_left, crop_right, crop_top, crop_bottom = r.ue(), r.ue(), r.ue(), r.ue()
    chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
    sub_w = 2 if chroma_array_type in (1, 2) else 1
    sub_h = 2 if chroma_array_type == 1 else 1
    crop_unit_x = sub_w if chroma_array_type else 1
    crop_unit_y = (sub_h if chroma_array_type else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - crop_unit_x * (crop_left + crop_right)
    height = (2 - frame_mbs_only) * height_map_units * 16 - crop_unit_y * (crop_top + crop_bottom)
    if width <= 0 or height <= 0:
        raise ValueError("SPS gives an empty picture")
    return width, height


class ParameterSetCache:
    """Remembers the latest SPS/PPS of a stream and puts them in front of any IDR access
    unit that lacks them, so every keyframe is decodable on its own."""

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None

    def process(self, access_unit: bytes) -> tuple[bytes, bool, tuple[int, int] | None]:
        """Return (access unit, is keyframe, dimensions if an SPS was seen)."""
        has_sps = has_pps = idr = False
        dims: tuple[int, int] | None = None
        for nal in iter_nal_units(access_unit):
            kind = nal[0] & 0x1F
            if kind == NAL_SPS:
                has_sps = True
                self.sps = nal
                try:
                    dims = sps_dimensions(nal)
                except (ValueError, IndexError):
                    dims = None
            elif kind == NAL_PPS:
                has_pps = True
                self.pps = nal
            elif kind == NAL_IDR:
                idr = True
        if idr and not (has_sps and has_pps) and self.sps and self.pps:
            access_unit = self._with_parameter_sets(access_unit, has_sps, has_pps)
        return access_unit, idr, dims

    def _with_parameter_sets(self, access_unit: bytes, has_sps: bool, has_pps: bool) -> bytes:
        """Insert the missing SPS before the first PPS or slice and the missing PPS before
        the first slice: a PPS refers to its SPS, and an access unit delimiter or SEI stays
        in front (H.264 7.4.1.2.3)."""
        need_sps, need_pps = not has_sps, not has_pps
        units: list[bytes] = []
        for nal in iter_nal_units(access_unit):
            kind = nal[0] & 0x1F
            slice_ = 1 <= kind <= 5
            if need_sps and self.sps and (slice_ or kind == NAL_PPS):
                units.append(self.sps)
                need_sps = False
            if need_pps and self.pps and slice_:
                units.append(self.pps)
                need_pps = False
            units.append(nal)
        return b"".join(START_CODE + nal for nal in units)
