"""FLV tags as RTMP carries them, sans I/O: H.264 video to and from Annex-B access units,
AAC audio to and from raw AAC frames.

RTMP/FLV carries AVCC: a decoder configuration record (SPS/PPS) once, then frames of
length-prefixed NAL units. WebRTC and every sink here want Annex-B with SPS/PPS in front
of every IDR, which `h264.ParameterSetCache` guarantees (`AvcTagReader`). `AvcTagWriter`
goes the other way for RTMP republishing, and `AacTagWriter` does the same for its audio:
an AudioSpecificConfig once, then raw AAC frames (`read_aac_tag` reads both).
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


KEYFRAME_TYPE, INTER_FRAME_TYPE = 1, 2  # FLV VideoTagHeader FrameType


def avc_decoder_configuration_record(sps: list[bytes], pps: list[bytes]) -> bytes:
    """An AVCDecoderConfigurationRecord (ISO 14496-15 5.2.4.1) for 4-byte NAL lengths.
    Profile, compatibility and level are those of the first SPS. The high-profile extension
    (chroma format, bit depths) is left out: decoders take those from the SPS itself."""
    if not sps or not pps:
        raise FlvError("a decoder configuration needs an SPS and a PPS")
    if len(sps) > 31 or len(pps) > 255 or any(not 4 <= len(nal) <= 0xFFFF for nal in sps):
        raise FlvError("parameter sets do not fit a decoder configuration record")
    out = bytearray([1, sps[0][1], sps[0][2], sps[0][3], 0xFC | 3, 0xE0 | len(sps)])
    for nal in sps:
        out += len(nal).to_bytes(2, "big") + nal
    out.append(len(pps))
    for nal in pps:
        if not 0 < len(nal) <= 0xFFFF:
            raise FlvError("a PPS does not fit a decoder configuration record")
        out += len(nal).to_bytes(2, "big") + nal
    return bytes(out)


def video_tag(packet_type: int, body: bytes, *, keyframe: bool) -> bytes:
    """A VIDEODATA body for H.264: FrameType/CodecID, AVCPacketType, composition time 0
    (there are no B-frames in a relayed stream: pts = dts)."""
    frame_type = KEYFRAME_TYPE if keyframe else INTER_FRAME_TYPE
    return bytes([frame_type << 4 | AVC_CODEC_ID, packet_type, 0, 0, 0]) + body


class AvcTagWriter:
    """Turns one stream's Annex-B access units into FLV video tag bodies: an AVC sequence
    header before the first frame and again whenever the SPS/PPS change, then one NALU tag
    per access unit."""

    def __init__(self) -> None:
        self.sps: list[bytes] = []
        self.pps: list[bytes] = []
        self.configured = False
        self.dimensions: tuple[int, int] | None = None

    def write(self, access_unit: bytes) -> list[bytes]:
        """The tag bodies to send for ``access_unit``, all with its timestamp: [] while no
        SPS/PPS have been seen (the far end could not decode what it got)."""
        nals = [nal for nal in h264.iter_nal_units(access_unit) if nal]
        sps = [nal for nal in nals if nal[0] & 0x1F == h264.NAL_SPS]
        pps = [nal for nal in nals if nal[0] & 0x1F == h264.NAL_PPS]
        tags: list[bytes] = []
        if (sps and sps != self.sps) or (pps and pps != self.pps):
            self.sps, self.pps = sps or self.sps, pps or self.pps
            if self.sps and self.pps:
                record = avc_decoder_configuration_record(self.sps, self.pps)
                tags.append(video_tag(SEQUENCE_HEADER, record, keyframe=True))
                self.configured = True
                try:
                    self.dimensions = h264.sps_dimensions(self.sps[0])
                except (ValueError, IndexError):
                    self.dimensions = None
        if not self.configured or not nals:
            return tags
        keyframe = any(nal[0] & 0x1F == h264.NAL_IDR for nal in nals)
        # The parameter sets stay in band too: a decoder may use either, and an IDR read back
        # is byte for byte what came in.
        body = b"".join(len(nal).to_bytes(4, "big") + nal for nal in nals)
        tags.append(video_tag(NALU, body, keyframe=keyframe))
        return tags


AAC_SOUND_FORMAT = 10
# The AUDIODATA flags byte of every AAC tag: SoundFormat 10, and SoundRate 3 (44 kHz), SoundSize 1
# (16 bits), SoundType 1 (stereo) whatever the audio is: the FLV spec fixes them for AAC, and
# decoders take the real rate and channels from the AudioSpecificConfig.
AAC_FLAGS = AAC_SOUND_FORMAT << 4 | 3 << 2 | 1 << 1 | 1


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


# SoundFormat of G.711 (FLV spec E.4.2.1): always 8 kHz; WebRTC carries it as it is.
G711_SOUND_FORMATS = {7: "PCMA", 8: "PCMU"}
G711_RATE = 8000


@dataclass(frozen=True, slots=True)
class G711Frame:
    codec: str  # "PCMA" or "PCMU", as a Stream names them
    data: bytes  # one byte per sample


def metadata_sound_format(codec_id: object) -> int | None:
    """The FLV SoundFormat an ``onMetaData`` ``audiocodecid`` names (10 for AAC, as the
    number or "mp4a"; 7 or 8 for G.711), or None for anything else. Metadata comes from the
    pusher and is only a hint: NaN, infinities, fractions, booleans and strings other than
    "mp4a" name nothing, and never raise."""
    if codec_id == "mp4a":
        return AAC_SOUND_FORMAT
    if isinstance(codec_id, bool) or not isinstance(codec_id, int | float):
        return None
    if isinstance(codec_id, float) and not codec_id.is_integer():  # NaN and infinities too
        return None
    number = int(codec_id)
    return number if number == AAC_SOUND_FORMAT or number in G711_SOUND_FORMATS else None


def read_audio_tag(tag: bytes) -> AacConfig | AacFrame | G711Frame:
    """What an FLV audio tag body carries: AAC (configuration or frame) or mono G.711
    samples. Raises FlvError for another codec, stereo G.711 or a short tag."""
    if not tag:
        raise FlvError("empty audio tag")
    codec = G711_SOUND_FORMATS.get(tag[0] >> 4)
    if codec is None:
        return read_aac_tag(tag)
    if tag[0] & 1:
        raise FlvError(f"{codec} in stereo (only mono G.711 can be relayed)")
    return G711Frame(codec, tag[1:])


def aac_tag(packet_type: int, body: bytes) -> bytes:
    """An AUDIODATA body for AAC: the flags byte, AACPacketType (SEQUENCE_HEADER for an
    AudioSpecificConfig, NALU (1, "raw") for a frame), then ``body``."""
    return bytes([AAC_FLAGS, packet_type]) + body


class AacTagWriter:
    """Turns one stream's raw AAC frames into FLV audio tag bodies: an AAC sequence header
    (the AudioSpecificConfig) before the first frame and again whenever the configuration
    changes, then one raw tag per frame."""

    def __init__(self) -> None:
        self.audio_specific_config: bytes | None = None

    def write(self, audio_specific_config: bytes, frame: bytes) -> list[bytes]:
        """The tag bodies to send for ``frame`` (encoded with ``audio_specific_config``), all
        with its timestamp. Raises FlvError for an AudioSpecificConfig too short to be one."""
        if len(audio_specific_config) < 2:
            raise FlvError("an AudioSpecificConfig has at least 2 bytes")
        tags: list[bytes] = []
        if audio_specific_config != self.audio_specific_config:
            self.audio_specific_config = audio_specific_config
            tags.append(aac_tag(SEQUENCE_HEADER, audio_specific_config))
        if frame:
            tags.append(aac_tag(NALU, frame))
        return tags
