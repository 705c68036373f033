"""H.264 Annex-B helpers: NAL unit splitting, keyframe detection, SPS dimensions, and
making sure SPS/PPS precede every IDR. Pure functions over bytes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
START_CODE = b"\x00\x00\x00\x01"


def iter_nal_units(data: bytes) -> Iterator[bytes]:
    """Yield the NAL units (without start codes) of an Annex-B byte string."""
    for start, end in _nal_spans(data):
        yield data[start:end]


def _nal_spans(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each non-empty NAL unit of an Annex-B byte string: `iter_nal_units`
    without copying the units, for scans that only read their headers."""
    n = len(data)
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < n:
        start = i + 3
        j = data.find(b"\x00\x00\x01", start)
        if j < 0:
            end = n
        else:
            # a 4-byte start code leaves a zero at the end of the previous unit
            end = j - 1 if data[j - 1] == 0 else j
        if end > start:
            yield start, end
        i = j


def nal_types(data: bytes) -> list[int]:
    return [nal[0] & 0x1F for nal in iter_nal_units(data)]


def is_keyframe(data: bytes) -> bool:
    return NAL_IDR in nal_types(data)


def find_parameter_sets(nal_units: Iterable[bytes]) -> tuple[bytes | None, bytes | None]:
    """The first SPS and the first PPS among ``nal_units`` (None where there is none)."""
    sps = pps = None
    for nal in nal_units:
        if not nal:
            continue
        kind = nal[0] & 0x1F
        if kind == NAL_SPS and sps is None:
            sps = nal
        elif kind == NAL_PPS and pps is None:
            pps = nal
    return sps, pps


def parameter_sets(access_unit: bytes) -> tuple[bytes | None, bytes | None]:
    """The SPS and PPS of an Annex-B access unit (a keyframe carries both on a Stream)."""
    return find_parameter_sets(iter_nal_units(access_unit))


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
        # The last SPS parsed and its picture size: encoders repeat the same SPS before
        # every IDR, so it is parsed once, not once per keyframe.
        self._parsed_sps: bytes | None = None
        self._parsed_dims: tuple[int, int] | None = None

    def process(self, access_unit: bytes) -> tuple[bytes, bool, tuple[int, int] | None]:
        """Return (access unit, is keyframe, dimensions if an SPS was seen)."""
        has_sps = has_pps = idr = False
        dims: tuple[int, int] | None = None
        # Per access unit: only the NAL headers are read; SPS/PPS alone are copied out.
        for start, end in _nal_spans(access_unit):
            kind = access_unit[start] & 0x1F
            if kind == NAL_SPS:
                has_sps = True
                self.sps = access_unit[start:end]
                dims = self._dimensions(self.sps)
            elif kind == NAL_PPS:
                has_pps = True
                self.pps = access_unit[start:end]
            elif kind == NAL_IDR:
                idr = True
        if idr and not (has_sps and has_pps) and self.sps and self.pps:
            access_unit = self._with_parameter_sets(access_unit, has_sps, has_pps)
        return access_unit, idr, dims

    def _dimensions(self, sps: bytes) -> tuple[int, int] | None:
        if sps != self._parsed_sps:
            try:
                self._parsed_dims = sps_dimensions(sps)
            except (ValueError, IndexError):
                self._parsed_dims = None
            self._parsed_sps = sps
        return self._parsed_dims

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


# --- SEI timestamps (user_data_unregistered) ------------------------------------------------
# The dock simulator stamps every access unit with the wall clock at the moment it hands the
# unit to its muxer, so a viewer on the same machine can measure glass-to-glass latency.

SEI_USER_DATA_UNREGISTERED = 5
# Marks our timestamp among other user_data_unregistered payloads (x264 writes one, too).
SEI_TIMESTAMP_UUID = bytes.fromhex("02fb8f5db5674db79b54168ae3029d6c")
_SEI_TIMESTAMP_SIZE = len(SEI_TIMESTAMP_UUID) + 8


def add_emulation_prevention(rbsp: bytes) -> bytes:
    """Insert 0x03 after every two zero bytes that precede a byte <= 3 (H.264 7.4.1), so
    the payload can never look like a start code."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def sei_timestamp_nal(ns: int) -> bytes:
    """An SEI NAL unit (header included, no start code) holding one user_data_unregistered
    message: `SEI_TIMESTAMP_UUID`, then ``ns`` as 8 bytes big-endian."""
    if not 0 <= ns < 1 << 64:
        raise ValueError(f"timestamp {ns} does not fit in 8 unsigned bytes")
    payload = SEI_TIMESTAMP_UUID + ns.to_bytes(8, "big")
    rbsp = bytes([SEI_USER_DATA_UNREGISTERED, len(payload)]) + payload + b"\x80"  # + trailing bits
    return bytes([NAL_SEI]) + add_emulation_prevention(rbsp)


def _sei_field(rbsp: bytes, pos: int) -> tuple[int, int]:
    """An SEI payload type or size (a run of 0xFF bytes adds 255 each) and the position after it."""
    value = 0
    while rbsp[pos] == 0xFF:
        value += 255
        pos += 1
    return value + rbsp[pos], pos + 1


def _sei_timestamp(nal: bytes) -> int | None:
    rbsp = _unescape(nal[1:])
    pos = 0
    try:
        # Stop at the rbsp_trailing_bits: 0x80, then nothing but zero bytes.
        while pos < len(rbsp) and not (rbsp[pos] == 0x80 and not any(rbsp[pos + 1 :])):
            kind, pos = _sei_field(rbsp, pos)
            size, pos = _sei_field(rbsp, pos)
            payload = rbsp[pos : pos + size]
            if len(payload) < size:
                return None  # truncated message
            pos += size
            if (
                kind == SEI_USER_DATA_UNREGISTERED
                and size == _SEI_TIMESTAMP_SIZE
                and payload.startswith(SEI_TIMESTAMP_UUID)
            ):
                return int.from_bytes(payload[len(SEI_TIMESTAMP_UUID) :], "big")
    except IndexError:
        return None  # a type or size running past the end
    return None


def read_sei_timestamp(access_unit: bytes) -> int | None:
    """The timestamp of `sei_timestamp_nal` in an Annex-B access unit, or None if it has none.
    Other SEI messages, and malformed SEI, are skipped."""
    for nal in iter_nal_units(access_unit):
        if nal[0] & 0x1F == NAL_SEI:
            found = _sei_timestamp(nal)
            if found is not None:
                return found
    return None


def insert_sei(access_unit: bytes, sei: bytes) -> bytes:
    """The Annex-B access unit with the SEI NAL unit ``sei`` just before its first slice: after
    any access unit delimiter, parameter sets and other SEI (H.264 7.4.1.2.3)."""
    units: list[bytes] = []
    inserted = False
    for nal in iter_nal_units(access_unit):
        if not inserted and 1 <= nal[0] & 0x1F <= NAL_IDR:
            units.append(sei)
            inserted = True
        units.append(nal)
    if not inserted:
        units.append(sei)  # no slice: nothing to come before
    return b"".join(START_CODE + nal for nal in units)
