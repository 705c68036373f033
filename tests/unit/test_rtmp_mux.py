"""gateway.media.rtmp.flv, the writing side: Annex-B access units of real x264 streams to FLV
AVC video tags (E.4.3.1 of the FLV spec) with an AVCDecoderConfigurationRecord (ISO 14496-15
5.2.4.1), checked field by field and read back by the ingest's `AvcTagReader`; raw AAC frames
to FLV AAC audio tags (E.4.2.1) with their AudioSpecificConfig, read back by `read_aac_tag`."""

from __future__ import annotations

import pytest

from gateway.media import h264
from gateway.media.h264 import NAL_IDR, NAL_PPS, NAL_SPS
from gateway.media.rtmp.flv import (
    AAC_FLAGS,
    NALU,
    SEQUENCE_HEADER,
    AacConfig,
    AacFrame,
    AacTagWriter,
    AvcTagReader,
    AvcTagWriter,
    FlvError,
    aac_tag,
    avc_decoder_configuration_record,
    read_aac_tag,
)
from tests.unit.helpers import access_units, annexb, nal_type


def parameter_sets(data: bytes) -> tuple[bytes, bytes]:
    nals = list(h264.iter_nal_units(data))
    return (
        next(n for n in nals if nal_type(n) == NAL_SPS),
        next(n for n in nals if nal_type(n) == NAL_PPS),
    )


def parse_record(record: bytes) -> tuple[int, list[bytes], list[bytes]]:
    """An independent reading of the record: (NAL length size, SPSs, PPSs)."""
    assert record[0] == 1  # configurationVersion
    assert record[4] >> 2 == 0x3F  # reserved bits
    assert record[5] >> 5 == 0x7  # reserved bits
    pos, sps, pps = 6, [], []
    for _ in range(record[5] & 0x1F):
        size = int.from_bytes(record[pos : pos + 2], "big")
        sps.append(record[pos + 2 : pos + 2 + size])
        pos += 2 + size
    count, pos = record[pos], pos + 1
    for _ in range(count):
        size = int.from_bytes(record[pos : pos + 2], "big")
        pps.append(record[pos + 2 : pos + 2 + size])
        pos += 2 + size
    assert pos == len(record)
    return (record[4] & 0x03) + 1, sps, pps


def split_avcc(body: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(body):
        size = int.from_bytes(body[pos : pos + 4], "big")
        out.append(body[pos + 4 : pos + 4 + size])
        pos += 4 + size
    assert pos == len(body)
    return out


def test_first_keyframe_gets_a_sequence_header_then_a_nalu_tag(encoded: dict[str, bytes]) -> None:
    units = access_units(encoded["gop"])
    sps, pps = parameter_sets(encoded["gop"])
    writer = AvcTagWriter()
    header, frame = writer.write(annexb(units[0]))
    # VideoTagHeader: FrameType 1 (key) | CodecID 7, AVCPacketType 0, CompositionTime 0.
    assert header[:5] == bytes([0x17, SEQUENCE_HEADER, 0, 0, 0])
    length_size, record_sps, record_pps = parse_record(header[5:])
    assert (length_size, record_sps, record_pps) == (4, [sps], [pps])
    assert header[6:9] == sps[1:4]  # AVCProfileIndication, profile_compatibility, AVCLevelIndication
    assert frame[:5] == bytes([0x17, NALU, 0, 0, 0])
    assert split_avcc(frame[5:]) == units[0]  # every NAL unit, in order, 4-byte lengths
    assert writer.dimensions == (640, 360)


def test_inter_frames_are_nalu_tags_without_a_header(encoded: dict[str, bytes]) -> None:
    units = access_units(encoded["gop"])
    writer = AvcTagWriter()
    writer.write(annexb(units[0]))
    for unit in units[1:3]:
        assert NAL_IDR not in [nal_type(n) for n in unit]
        (tag,) = writer.write(annexb(unit))
        assert tag[:5] == bytes([0x27, NALU, 0, 0, 0])  # FrameType 2 (inter)
        assert split_avcc(tag[5:]) == unit


@pytest.mark.parametrize("name", ["gop", "gop-aud", "640x360-high", "1920x1080-interlaced"])
def test_round_trip_through_the_ingest_reader(encoded: dict[str, bytes], name: str) -> None:
    """What the republish writes, our RTMP ingest reads back as the same access units."""
    writer, reader = AvcTagWriter(), AvcTagReader()
    units = access_units(encoded[name])
    read: list[bytes] = []
    keyframes: list[bool] = []
    for unit in units:
        for tag in writer.write(annexb(unit)):
            access_unit = reader.read(tag)
            if access_unit is not None:
                read.append(access_unit.data)
                keyframes.append(access_unit.keyframe)
                assert access_unit.composition_offset == 0
    assert read == [annexb(unit) for unit in units]
    assert keyframes == [NAL_IDR in [nal_type(n) for n in unit] for unit in units]
    assert reader.dimensions == writer.dimensions


def test_frames_before_any_parameter_set_are_not_sent(encoded: dict[str, bytes]) -> None:
    """A receiver could not decode them; nothing is sent until a keyframe with SPS/PPS."""
    units = access_units(encoded["gop"])
    writer = AvcTagWriter()
    assert writer.write(annexb(units[1])) == []
    assert writer.write(b"") == []
    assert len(writer.write(annexb(units[0]))) == 2


def test_keyframe_without_in_band_parameter_sets_reuses_the_configuration(encoded: dict[str, bytes]) -> None:
    units = access_units(encoded["gop"])
    writer = AvcTagWriter()
    writer.write(annexb(units[0]))
    bare_idr = [nal for nal in units[0] if nal_type(nal) not in (NAL_SPS, NAL_PPS)]
    (tag,) = writer.write(annexb(bare_idr))
    assert tag[:2] == bytes([0x17, NALU])


def test_same_parameter_sets_again_send_no_new_header(encoded: dict[str, bytes]) -> None:
    units = access_units(encoded["gop"])
    keyframes = [unit for unit in units if NAL_IDR in [nal_type(n) for n in unit]]
    assert len(keyframes) >= 2
    writer = AvcTagWriter()
    assert len(writer.write(annexb(keyframes[0]))) == 2
    assert len(writer.write(annexb(keyframes[1]))) == 1  # SPS/PPS repeated in band, unchanged


def test_new_parameter_sets_send_a_new_header(encoded: dict[str, bytes]) -> None:
    first, second = access_units(encoded["gop"]), access_units(encoded["1280x720-baseline"])
    writer, reader = AvcTagWriter(), AvcTagReader()
    for tag in writer.write(annexb(first[0])):
        reader.read(tag)
    assert reader.dimensions == (640, 360)
    header, frame = writer.write(annexb(second[0]))
    assert header[1] == SEQUENCE_HEADER
    assert parse_record(header[5:])[1:] == tuple(
        [nal] for nal in parameter_sets(encoded["1280x720-baseline"])
    )
    assert reader.read(header) is None
    access_unit = reader.read(frame)
    assert access_unit is not None and access_unit.data == annexb(second[0])
    assert reader.dimensions == writer.dimensions == (1280, 720)


def test_a_pps_alone_updates_the_configuration(encoded: dict[str, bytes]) -> None:
    units = access_units(encoded["gop"])
    sps, pps = parameter_sets(encoded["gop"])
    writer = AvcTagWriter()
    writer.write(annexb(units[0]))
    other_pps = pps + b"\x80"  # any other bytes: the writer does not parse a PPS
    header, _ = writer.write(annexb([other_pps, *units[1]]))
    assert parse_record(header[5:])[1:] == ([sps], [other_pps])


def test_record_refuses_what_it_cannot_hold() -> None:
    sps, pps = bytes([0x67, 0x42, 0xC0, 0x1E, 0xDA]), bytes([0x68, 0xCE, 0x3C, 0x80])
    assert parse_record(avc_decoder_configuration_record([sps], [pps])) == (4, [sps], [pps])
    for bad_sps, bad_pps in [([], [pps]), ([sps], []), ([b"\x67\x42"], [pps]), ([sps] * 32, [pps])]:
        with pytest.raises(FlvError):
            avc_decoder_configuration_record(bad_sps, bad_pps)


# --- AAC ----------------------------------------------------------------------------------------

AAC_LC_48K_STEREO = bytes([0x11, 0x90])  # object type 2, frequency index 3, 2 channels


def test_aac_flags_byte() -> None:
    """SoundFormat 10 (AAC), SoundRate 3 (44 kHz), SoundSize 1 (16 bits), SoundType 1
    (stereo): what the FLV spec fixes for every AAC tag."""
    assert AAC_FLAGS == 0xAF
    assert (AAC_FLAGS >> 4, AAC_FLAGS >> 2 & 3, AAC_FLAGS >> 1 & 1, AAC_FLAGS & 1) == (10, 3, 1, 1)
    assert aac_tag(SEQUENCE_HEADER, AAC_LC_48K_STEREO) == b"\xaf\x00\x11\x90"
    assert aac_tag(NALU, b"\x21\x10") == b"\xaf\x01\x21\x10"


def test_aac_sequence_header_before_the_first_raw_frame() -> None:
    writer = AacTagWriter()
    header, frame = writer.write(AAC_LC_48K_STEREO, b"\x21\x10\x04")
    assert header == bytes([0xAF, 0]) + AAC_LC_48K_STEREO  # AACPacketType 0: AudioSpecificConfig
    assert frame == bytes([0xAF, 1, 0x21, 0x10, 0x04])  # AACPacketType 1: raw
    assert read_aac_tag(header) == AacConfig(AAC_LC_48K_STEREO)
    assert read_aac_tag(frame) == AacFrame(b"\x21\x10\x04")
    # The same configuration: raw frames only.
    assert writer.write(AAC_LC_48K_STEREO, b"\x01") == [b"\xaf\x01\x01"]


def test_a_new_aac_configuration_sends_a_new_header() -> None:
    writer = AacTagWriter()
    writer.write(AAC_LC_48K_STEREO, b"\x01")
    mono_44k = bytes([0x12, 0x08])
    assert writer.write(mono_44k, b"\x02") == [b"\xaf\x00" + mono_44k, b"\xaf\x01\x02"]
    assert writer.audio_specific_config == mono_44k


def test_aac_writer_refuses_a_config_too_short() -> None:
    with pytest.raises(FlvError, match="AudioSpecificConfig"):
        AacTagWriter().write(b"\x11", b"\x01")
