"""gateway.media.rtmp.flv: FLV AVC video tags (E.4.3.1 of the FLV spec) and the
AVCDecoderConfigurationRecord (ISO 14496-15 5.2.4.1) built from real x264 streams, turned into
Annex-B access units with SPS/PPS in front of every IDR."""

from __future__ import annotations

import pytest

from gateway.media import h264
from gateway.media.h264 import NAL_AUD, NAL_IDR, NAL_PPS, NAL_SEI, NAL_SPS
from gateway.media.rtmp.flv import AccessUnit, AvcTagReader, FlvError
from tests.unit.helpers import VCL, access_units, annexb, nal_type


def parameter_sets(data: bytes) -> tuple[bytes, bytes]:
    nals = list(h264.iter_nal_units(data))
    sps = next(n for n in nals if nal_type(n) == NAL_SPS)
    pps = next(n for n in nals if nal_type(n) == NAL_PPS)
    return sps, pps


def record(sps: list[bytes], pps: list[bytes], length_size: int = 4, trailer: bytes = b"") -> bytes:
    """AVCDecoderConfigurationRecord: version 1, profile/compat/level from the SPS, 6 reserved
    bits + lengthSizeMinusOne, 3 reserved bits + numOfSequenceParameterSets, ..."""
    out = bytes([1, sps[0][1], sps[0][2], sps[0][3], 0xFC | (length_size - 1), 0xE0 | len(sps)])
    for nal in sps:
        out += len(nal).to_bytes(2, "big") + nal
    out += bytes([len(pps)])
    for nal in pps:
        out += len(nal).to_bytes(2, "big") + nal
    return out + trailer


def tag(packet_type: int, body: bytes, *, keyframe: bool = False, cts: int = 0, codec: int = 7) -> bytes:
    """An FLV VIDEODATA body: frame type + codec id, AVCPacketType, SI24 composition time."""
    first = (0x10 if keyframe else 0x20) | codec
    return bytes([first, packet_type]) + cts.to_bytes(3, "big", signed=True) + body


def avcc(nals: list[bytes], length_size: int = 4) -> bytes:
    return b"".join(len(nal).to_bytes(length_size, "big") + nal for nal in nals)


def sequence_header(sps: bytes, pps: bytes, length_size: int = 4) -> bytes:
    return tag(0, record([sps], [pps], length_size), keyframe=True)


def nalu_tag(nals: list[bytes], *, length_size: int = 4, cts: int = 0) -> bytes:
    keyframe = any(nal_type(n) == NAL_IDR for n in nals)
    return tag(1, avcc(nals, length_size), keyframe=keyframe, cts=cts)


def without_parameter_sets(unit: list[bytes]) -> list[bytes]:
    return [nal for nal in unit if nal_type(nal) not in (NAL_SPS, NAL_PPS)]


def with_parameter_sets(unit: list[bytes], sps: bytes, pps: bytes) -> list[bytes]:
    """Where SPS/PPS belong in an IDR access unit: after AUD/SEI, before the first slice."""
    out: list[bytes] = []
    for nal in without_parameter_sets(unit):
        if nal_type(nal) in VCL and sps not in out:
            out += [sps, pps]
        out.append(nal)
    return out


@pytest.fixture(scope="module")
def gop(encoded: dict[str, bytes]) -> tuple[list[list[bytes]], bytes, bytes]:
    """640x360 High profile, an IDR every 3 frames, 7 frames."""
    units = access_units(encoded["gop"])
    assert len(units) == 7
    sps, pps = parameter_sets(encoded["gop"])
    return units, sps, pps


# --- access units -----------------------------------------------------------------------------


def test_sequence_header_then_frames(gop: tuple[list[list[bytes]], bytes, bytes]) -> None:
    units, sps, pps = gop
    reader = AvcTagReader()
    assert reader.read(sequence_header(sps, pps)) is None
    assert reader.dimensions == (640, 360)
    assert reader.nal_length_size == 4
    keyframes = []
    for unit in units:
        frame = without_parameter_sets(unit)  # what ffmpeg's FLV muxer sends: the SPS/PPS are global
        out = reader.read(nalu_tag(frame))
        assert isinstance(out, AccessUnit)
        keyframes.append(out.keyframe)
        if out.keyframe:
            assert out.data == annexb(with_parameter_sets(unit, sps, pps))
            types = h264.nal_types(out.data)
            assert types.index(NAL_SPS) < types.index(NAL_PPS) < types.index(NAL_IDR)
        else:
            assert out.data == annexb(frame)
            assert NAL_SPS not in h264.nal_types(out.data)
        assert out.composition_offset == 0
    assert keyframes == [True, False, False, True, False, False, True]


def test_first_idr_carries_the_parameter_sets(gop: tuple[list[list[bytes]], bytes, bytes]) -> None:
    """No sequence header: the first IDR carries SPS/PPS in band, the later ones do not."""
    units, sps, pps = gop
    reader = AvcTagReader()
    first = reader.read(nalu_tag(units[0]))
    assert first is not None and first.keyframe
    assert first.data == annexb(units[0])
    assert h264.nal_types(first.data)[:4] == [NAL_SPS, NAL_PPS, NAL_SEI, NAL_IDR]
    assert reader.dimensions == (640, 360)
    outputs = [reader.read(nalu_tag(without_parameter_sets(unit))) for unit in units[1:]]
    for unit, out in zip(units[1:], outputs, strict=True):
        assert out is not None
        if out.keyframe:
            assert out.data == annexb(with_parameter_sets(unit, sps, pps))
        else:
            assert out.data == annexb(unit)
    assert sum(out.keyframe for out in outputs if out) == 2


def test_access_unit_delimiters_stay_in_front(encoded: dict[str, bytes]) -> None:
    units = access_units(encoded["gop-aud"])
    sps, pps = parameter_sets(encoded["gop-aud"])
    reader = AvcTagReader()
    reader.read(sequence_header(sps, pps))
    assert reader.dimensions == (320, 240)
    for unit in units:
        out = reader.read(nalu_tag(without_parameter_sets(unit)))
        assert out is not None
        types = h264.nal_types(out.data)
        assert types[0] == NAL_AUD
        if out.keyframe:
            assert types.index(NAL_SPS) < types.index(NAL_PPS) < types.index(NAL_IDR)
            assert out.data == annexb(with_parameter_sets(unit, sps, pps))


def test_two_byte_nal_lengths(gop: tuple[list[list[bytes]], bytes, bytes]) -> None:
    units, sps, pps = gop
    assert all(len(nal) < 0x10000 for unit in units for nal in unit)
    reader = AvcTagReader()
    reader.read(sequence_header(sps, pps, length_size=2))
    assert reader.nal_length_size == 2
    out = [reader.read(nalu_tag(without_parameter_sets(unit), length_size=2)) for unit in units]
    assert [o.keyframe for o in out if o] == [True, False, False, True, False, False, True]
    assert out[1] is not None and out[1].data == annexb(units[1])
    assert out[3] is not None and out[3].data == annexb(with_parameter_sets(units[3], sps, pps))


@pytest.mark.parametrize("length_size", [1, 4])
def test_other_nal_length_sizes(length_size: int, gop: tuple[list[list[bytes]], bytes, bytes]) -> None:
    _, sps, pps = gop
    reader = AvcTagReader()
    reader.read(sequence_header(sps, pps, length_size=length_size))
    assert reader.nal_length_size == length_size
    slice_ = bytes([0x41, 0x9A]) + bytes(range(1, 100))
    out = reader.read(nalu_tag([slice_, b"\x06\x05\x01\x80"], length_size=length_size))
    assert out == AccessUnit(annexb([slice_, b"\x06\x05\x01\x80"]), False, 0)


def test_several_slices_and_sei_in_one_tag(gop: tuple[list[list[bytes]], bytes, bytes]) -> None:
    units, sps, pps = gop
    reader = AvcTagReader()
    reader.read(sequence_header(sps, pps))
    idr = [n for n in units[3] if nal_type(n) == NAL_IDR][0]
    sei = b"\x06\x05\x02\xaa\xbb\x80"
    out = reader.read(nalu_tag([sei, idr, idr]))
    assert out is not None and out.keyframe
    assert h264.nal_types(out.data) == [NAL_SEI, NAL_SPS, NAL_PPS, NAL_IDR, NAL_IDR]


@pytest.mark.parametrize("cts", [0, 33, -33, 0x7FFFFF, -0x800000, 1])
def test_composition_offset(cts: int, gop: tuple[list[list[bytes]], bytes, bytes]) -> None:
    units, sps, pps = gop
    reader = AvcTagReader()
    reader.read(sequence_header(sps, pps))
    data = nalu_tag(without_parameter_sets(units[1]), cts=cts)
    if cts == -33:
        assert data[2:5] == b"\xff\xff\xdf"
    out = reader.read(data)
    assert out is not None and out.composition_offset == cts


def test_new_sequence_header_changes_the_parameter_sets(encoded: dict[str, bytes]) -> None:
    reader = AvcTagReader()
    sps_a, pps_a = parameter_sets(encoded["gop"])
    sps_b, pps_b = parameter_sets(encoded["1280x720-baseline"])
    reader.read(sequence_header(sps_a, pps_a))
    assert reader.dimensions == (640, 360)
    reader.read(sequence_header(sps_b, pps_b, length_size=2))
    assert reader.dimensions == (1280, 720)
    assert reader.nal_length_size == 2
    idr = [n for n in access_units(encoded["1280x720-baseline"])[0] if nal_type(n) == NAL_IDR][0]
    out = reader.read(nalu_tag([idr], length_size=2))
    assert out is not None and out.data == annexb([sps_b, pps_b, idr])


def test_record_with_several_parameter_sets_and_a_high_profile_trailer(
    gop: tuple[list[list[bytes]], bytes, bytes],
) -> None:
    # High profile records may end with chroma_format/bit depth/SPS-ext fields (14496-15 5.2.4.1.1).
    _, sps, pps = gop
    reader = AvcTagReader()
    trailer = bytes([0xFC | 1, 0xF8, 0xF8, 0x00])
    assert reader.read(tag(0, record([sps, sps], [pps, pps], trailer=trailer), keyframe=True)) is None
    assert reader.dimensions == (640, 360)


def test_end_of_sequence_and_empty_nalu_tags() -> None:
    reader = AvcTagReader()
    assert reader.read(tag(2, b"", keyframe=True)) is None
    assert reader.read(tag(1, b"")) is None  # no NAL units at all
    assert reader.read(tag(3, b"\x00\x01")) is None  # unknown packet type: skipped


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [2, 3, 4, 5, 6, 12, 13])  # Sorenson, screen, VP6, VP6A, screen2, HEVC
def test_non_avc_codec(codec: int) -> None:
    with pytest.raises(FlvError):
        AvcTagReader().read(tag(1, avcc([b"\x65\x88"]), codec=codec))


def test_enhanced_rtmp_is_refused() -> None:
    # Enhanced RTMP: IsExHeader bit, frame type, packet type in the low nibble, then a FourCC.
    for first in (0x90, 0x91, 0x93, 0xA1, 0x97):
        with pytest.raises(FlvError):
            AvcTagReader().read(bytes([first]) + b"hvc1" + bytes(8))


@pytest.mark.parametrize("data", [b"", b"\x17", b"\x17\x01", b"\x17\x01\x00\x00"])
def test_short_tag(data: bytes) -> None:
    with pytest.raises(FlvError):
        AvcTagReader().read(data)


def test_truncated_record(gop: tuple[list[list[bytes]], bytes, bytes]) -> None:
    _, sps, pps = gop
    full = record([sps], [pps])
    AvcTagReader().read(tag(0, full))
    for cut in range(0, len(full)):
        with pytest.raises(FlvError):
            AvcTagReader().read(tag(0, full[:cut]))


@pytest.mark.parametrize(
    "body",
    [
        bytes([0, 100, 0, 31, 0xFF, 0xE0, 0]),  # version 0
        bytes([2, 100, 0, 31, 0xFF, 0xE0, 0]),  # version 2
        bytes([1, 100, 0, 31, 0xFF, 0xE1, 0x00, 0x00, 0x00]),  # a zero-length SPS
        bytes([1, 100, 0, 31, 0xFF, 0xE1, 0x00, 0x10, 0x67]),  # SPS length beyond the record
    ],
)
def test_bad_record(body: bytes) -> None:
    with pytest.raises(FlvError):
        AvcTagReader().read(tag(0, body))


def test_nal_length_beyond_the_tag(gop: tuple[list[list[bytes]], bytes, bytes]) -> None:
    units, sps, pps = gop
    reader = AvcTagReader()
    reader.read(sequence_header(sps, pps))
    frame = avcc(units[1])
    with pytest.raises(FlvError):
        reader.read(tag(1, frame[:-1]))
    with pytest.raises(FlvError):
        reader.read(tag(1, (0xFFFFFFFF).to_bytes(4, "big") + b"\x41\x9a"))
    with pytest.raises(FlvError):
        reader.read(tag(1, frame + b"\x00\x00"))  # a length field cut short
    with pytest.raises(FlvError):
        reader.read(tag(1, b"\x00\x00\x00\x00" + frame))  # a zero length


def test_aac_tags_give_the_config_then_raw_frames() -> None:
    from gateway.media.rtmp.flv import AacConfig, AacFrame, read_aac_tag

    assert read_aac_tag(b"\xaf\x00\x12\x10") == AacConfig(b"\x12\x10")
    assert read_aac_tag(b"\xaf\x01\x21\x00\x49") == AacFrame(b"\x21\x00\x49")
    for bad, words in [
        (b"\xaf", "shorter"),
        (b"\x2f\x01\xff", "not AAC"),
        (b"\xaf\x00\x12", "AudioSpecificConfig"),
    ]:
        with pytest.raises(FlvError, match=words):
            read_aac_tag(bad)


def test_audio_tags_give_aac_or_mono_g711_samples() -> None:
    from gateway.media.rtmp.flv import AacConfig, G711Frame, read_audio_tag

    assert read_audio_tag(b"\xaf\x00\x12\x10") == AacConfig(b"\x12\x10")
    # What ffmpeg's FLV muxer writes for pcm_mulaw / pcm_alaw, 8 kHz mono: 0x82 / 0x72.
    assert read_audio_tag(b"\x82" + bytes(range(10))) == G711Frame("PCMU", bytes(range(10)))
    assert read_audio_tag(b"\x72\xd5\xd5") == G711Frame("PCMA", b"\xd5\xd5")
    for bad, words in [
        (b"", "empty"),
        (b"\x83\x00\x00", "stereo"),
        (b"\x2f\x01\xff", "not AAC"),  # MP3
    ]:
        with pytest.raises(FlvError, match=words):
            read_audio_tag(bad)
