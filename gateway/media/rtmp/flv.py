"""FLV video tags as RTMP carries them, to H.264 Annex-B access units. Pure functions.

RTMP/FLV carries AVCC: a decoder configuration record (SPS/PPS) once, then frames of
length-prefixed NAL units. WebRTC and every sink here want Annex-B with SPS/PPS in front
of every IDR, which `h264.ParameterSetCache` guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.media import h264

AVC_CODEC_ID = 7
SEQUENCE_HEADER, NALU, END_OF_SEQUENCE = 0, 1, 2


class FlvError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AccessUnit:
    data: bytes  # Annex-B
    keyframe: bool
    composition_offset: int  # ms: pts = dts + this (non-zero only with B-frames)


class AvcTagReader:
    """Turns one publisher's FLV video tag bodies into access units."""

    def __init__(self) -> None:
        self.parameter_sets = h264.ParameterSetCache()
        self.nal_length_size = 4
        self.dimensions: tuple[int, int] | None = None

    def read(self, tag: bytes) -> AccessUnit | None:
        """The access unit in ``tag``, or None for a configuration or end-of-sequence tag.
        Raises FlvError for a codec other than H.264 or a malformed tag."""
        if len(tag) < 5:
            raise FlvError("video tag shorter than its header")
        if tag[0] & 0x80:
            raise FlvError("enhanced RTMP video (HEVC/AV1/VP9 FourCC) is not supported; push H.264")
        codec = tag[0] & 0x0F
        if codec != AVC_CODEC_ID:
            raise FlvError(f"video codec id {codec} is not H.264 (AVC, id 7)")
        packet_type = tag[1]
        offset = int.from_bytes(tag[2:5], "big", signed=True)
        body = tag[5:]
        if packet_type == SEQUENCE_HEADER:
            self._configure(body)
            return None
        if packet_type != NALU:
            return None
        units = self._split(body)
        if not units:
            return None
        annexb = b"".join(h264.START_CODE + nal for nal in units)
        data, keyframe, dims = self.parameter_sets.process(annexb)
        if dims is not None:
            self.dimensions = dims
        return AccessUnit(data, keyframe, offset)

    def _configure(self, record: bytes) -> None:
        """AVCDecoderConfigurationRecord (ISO 14496-15 5.2.4.1)."""
        if len(record) < 7 or record[0] != 1:
            raise FlvError("bad AVC decoder configuration record")
        nal_length_size = (record[4] & 0x03) + 1
        pos, sets = 5, []
        for count_mask in (0x1F, 0xFF):
            if pos >= len(record):
                raise FlvError("AVC decoder configuration record truncated")
            count, pos = record[pos] & count_mask, pos + 1
            for _ in range(count):
                if pos + 2 > len(record):
                    raise FlvError("AVC decoder configuration record truncated")
                size = int.from_bytes(record[pos : pos + 2], "big")
                nal = record[pos + 2 : pos + 2 + size]
                if len(nal) != size or not nal:
                    raise FlvError("AVC decoder configuration record truncated")
                sets.append(nal)
                pos += 2 + size
        self.nal_length_size = nal_length_size  # only once the whole record is valid
        # Let the cache learn SPS/PPS (and the picture size) as from an access unit.
        _, _, dims = self.parameter_sets.process(b"".join(h264.START_CODE + nal for nal in sets))
        if dims is not None:
            self.dimensions = dims

    def _split(self, body: bytes) -> list[bytes]:
        units, pos, size = [], 0, self.nal_length_size
        while pos < len(body):
            if pos + size > len(body):
                raise FlvError("NAL unit length truncated")
            length = int.from_bytes(body[pos : pos + size], "big")
            pos += size
            if length == 0 or pos + length > len(body):
                raise FlvError("NAL unit length beyond the tag")
            units.append(body[pos : pos + length])
            pos += length
        return units


AAC_SOUND_FORMAT = 10


@dataclass(frozen=True, slots=True)
class AacConfig:
    """The AudioSpecificConfig (ISO 14496-3) an AAC stream starts with."""

    audio_specific_config: bytes


@dataclass(frozen=True, slots=True)
class AacFrame:
    data: bytes  # one raw AAC frame (no ADTS header)


def read_aac_tag(tag: bytes) -> AacConfig | AacFrame:
    """What an FLV audio tag body carries. Raises FlvError for another codec or a short tag."""
    if len(tag) < 2:
        raise FlvError("audio tag shorter than its header")
    sound_format = tag[0] >> 4
    if sound_format != AAC_SOUND_FORMAT:
        raise FlvError(f"audio format {sound_format} is not AAC (10)")
    if tag[1] == SEQUENCE_HEADER:
        if len(tag) < 4:
            raise FlvError("AAC sequence header without an AudioSpecificConfig")
        return AacConfig(tag[2:])
    return AacFrame(tag[2:])
