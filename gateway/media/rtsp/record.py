"""What an RTSP publisher (ANNOUNCE/RECORD, RFC 2326 10.3 and 10.11) sends, sans I/O: the
tracks of its SDP, and its RTP turned into media.

`announced_tracks` reads an ANNOUNCE body: it must be an SDP with an H.264 video track (the
stream exists for its video). Audio tracks are kept when they can be relayed as they are
(Opus, PCMU, PCMA) or are AAC-hbr (RFC 3640), whose frames the publisher transcodes; any
other track (a second video, data, other AAC modes) is still set up, so the publisher can
go on, but its packets are dropped. `Recording` turns the RTP of the set-up
tracks into `AccessUnit`s (video, SPS/PPS of the SDP put before IDRs) and `AudioUnit`s.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.media.rtsp.message import RtspError
from gateway.media.rtsp.rtp import AccessUnit, H264Depacketizer, RtpError, RtspRtpPacket, parse_rtp
from gateway.media.rtsp.sdp import parse_sdp, sprop_parameter_sets

# RTP encoding name (upper case) -> the codec name a Stream uses (aiortc's).
RELAYED_AUDIO = {"OPUS": "opus", "PCMU": "PCMU", "PCMA": "PCMA"}
# Static payload types (RFC 3551) a publisher may use without an rtpmap.
STATIC_PAYLOAD_TYPES = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}


@dataclass(frozen=True, slots=True)
class PushTrack:
    """One media section of a publisher's SDP."""

    index: int
    kind: str  # "video", "audio", ...
    control: str  # the SDP's control attribute: what SETUP names the track by
    payload_type: int
    encoding: str  # upper case: "H264", "OPUS", "PCMU", "MPEG4-GENERIC", ...
    clock_rate: int
    sps: bytes | None = None
    pps: bytes | None = None
    # AAC (RFC 3640, AAC-hbr): the AudioSpecificConfig of the fmtp's `config`.
    aac_config: bytes | None = None

    @property
    def h264(self) -> bool:
        return self.kind == "video" and self.encoding == "H264"

    @property
    def audio_codec(self) -> str | None:
        """The codec this track's frames come out as ("aac": raw AAC frames the publisher
        transcodes to Opus), or None when its packets are dropped."""
        if self.kind != "audio":
            return None
        if self.encoding == "MPEG4-GENERIC":
            return "aac" if self.aac_config else None
        return RELAYED_AUDIO.get(self.encoding)


@dataclass(frozen=True, slots=True)
class AudioUnit:
    """One audio frame (the payload of one RTP packet). ``timestamp`` counts the track's
    clock from its first packet, extended past 32-bit wrap-around."""

    track: int
    codec: str
    data: bytes
    timestamp: int
    clock_rate: int


def announced_tracks(body: bytes) -> tuple[PushTrack, ...]:
    """The tracks of an ANNOUNCE body. Raises RtspError: 400 for what is not an SDP, 415 for
    an SDP without H.264 video."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RtspError("the SDP is not UTF-8") from None
    if not text.lstrip().startswith("v=0"):
        raise RtspError("the body is not an SDP (no v=0)")
    sdp = parse_sdp(text)
    tracks: list[PushTrack] = []
    for index, media in enumerate(sdp.media):
        if not media.formats:
            raise RtspError(f"SDP media {index} has no payload type")
        pt = media.formats[0]
        encoding, clock_rate = media.rtpmap.get(pt, STATIC_PAYLOAD_TYPES.get(pt, ("", 0)))
        # Without a control attribute a track is named by its position (as ffmpeg does).
        control = media.control or f"streamid={index}"
        sps = pps = aac = None
        fmtp = media.fmtp.get(pt, {})
        if media.kind == "video" and encoding.upper() == "H264":
            sps, pps = sprop_parameter_sets(fmtp.get("sprop-parameter-sets", ""))
        if media.kind == "audio" and encoding.upper() == "MPEG4-GENERIC":
            aac = _aac_hbr_config(fmtp)
        tracks.append(
            PushTrack(index, media.kind, control, pt, encoding.upper(), clock_rate or 90000, sps, pps, aac)
        )
    if not any(track.h264 for track in tracks):
        raise RtspError("the SDP has no H.264 video track", 415)
    if len({track.control for track in tracks}) != len(tracks):
        raise RtspError("two SDP tracks have the same control")
    return tuple(tracks)


def _aac_hbr_config(fmtp: dict[str, str]) -> bytes | None:
    """The AudioSpecificConfig of an AAC-hbr track (13-bit sizes, 3-bit indexes: what
    ffmpeg and cameras send), or None for another mode, which is then dropped."""
    lowered = {key.lower(): value for key, value in fmtp.items()}
    if lowered.get("mode", "").lower() != "aac-hbr" or lowered.get("sizelength") != "13":
        return None
    if lowered.get("indexlength", "3") != "3":
        return None
    try:
        return bytes.fromhex(lowered.get("config", "")) or None
    except ValueError:
        return None


def aac_frames(payload: bytes) -> list[bytes]:
    """The AAC frames of an RFC 3640 AAC-hbr RTP payload: AU-headers-length (bits), one
    16-bit header per frame (13-bit size, 3-bit index), then the frames. Raises ValueError
    for a payload that does not add up."""
    if len(payload) < 2:
        raise ValueError("AAC payload shorter than its AU-headers-length")
    header_bits = int.from_bytes(payload[:2], "big")
    if header_bits % 16:
        raise ValueError("AU headers are not 16 bits each")
    header_end = 2 + header_bits // 8
    sizes = [int.from_bytes(payload[i : i + 2], "big") >> 3 for i in range(2, header_end, 2)]
    frames, pos = [], header_end
    for size in sizes:
        if size == 0 or pos + size > len(payload):
            raise ValueError("AU size beyond the payload")
        frames.append(payload[pos : pos + size])
        pos += size
    return frames


class _Timeline:
    """An RTP timestamp extended past wrap-around, counted from the first packet."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._extended = 0

    def extend(self, timestamp: int) -> int:
        if self._last is None:
            self._last = timestamp
            return 0
        delta = (timestamp - self._last) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        self._last = timestamp
        self._extended += delta
        return self._extended


class AudioDepacketizer:
    """The RTP of one relayed audio track (an announced one, or one a pull set up) into
    `AudioUnit`s: late or repeated packets dropped, timestamps extended past wrap-around,
    AAC-hbr payloads split into their frames."""

    def __init__(self, track: PushTrack) -> None:
        codec = track.audio_codec
        if codec is None:
            raise ValueError(f"audio track {track.encoding!r} is not relayed")
        self.track, self.codec = track, codec
        self.bad_packets = 0
        self._timeline = _Timeline()
        self._sequence: int | None = None

    def receive(self, packet: RtspRtpPacket) -> list[AudioUnit]:
        track = self.track
        if packet.payload_type != track.payload_type:
            self.bad_packets += 1
            return []
        previous = self._sequence
        if previous is not None and not 0 < (packet.sequence - previous) & 0xFFFF < 0x8000:
            return []  # late or repeated: its place in time has passed
        self._sequence = packet.sequence
        if not packet.payload:
            return []
        timestamp = self._timeline.extend(packet.timestamp)
        if self.codec == "aac":
            try:
                frames = aac_frames(packet.payload)
            except ValueError:
                self.bad_packets += 1
                return []
            # Each AAC frame is 1024 samples at the track's clock rate (its sample rate).
            return [
                AudioUnit(track.index, self.codec, frame, timestamp + i * 1024, track.clock_rate)
                for i, frame in enumerate(frames)
            ]
        return [AudioUnit(track.index, self.codec, packet.payload, timestamp, track.clock_rate)]


class Recording:
    """The media of one publishing session: RTP in, access units and audio frames out."""

    def __init__(self, tracks: tuple[PushTrack, ...]) -> None:
        self.tracks = tracks
        self.video = next(track for track in tracks if track.h264)
        self.audio = next((track for track in tracks if track.audio_codec is not None), None)
        self.depacketizer = H264Depacketizer(sps=self.video.sps, pps=self.video.pps)
        self.audio_depacketizer = AudioDepacketizer(self.audio) if self.audio is not None else None
        self._bad_packets = 0
        self.ignored_packets = 0  # of tracks that are not relayed

    @property
    def bad_packets(self) -> int:
        audio = self.audio_depacketizer
        return self._bad_packets + (audio.bad_packets if audio is not None else 0)

    def receive(self, track: int, data: bytes) -> list[AccessUnit | AudioUnit]:
        """One RTP packet of track ``track``; a malformed one is counted and dropped."""
        is_video = track == self.video.index
        audio = self.audio_depacketizer
        if not is_video and (audio is None or track != audio.track.index):
            self.ignored_packets += 1
            return []
        try:
            packet = parse_rtp(data)
        except RtpError:
            self._bad_packets += 1
            return []
        if not is_video:
            assert audio is not None
            return list(audio.receive(packet))
        if packet.payload_type != self.video.payload_type:
            self._bad_packets += 1
            return []
        return list(self.depacketizer.receive(packet))
