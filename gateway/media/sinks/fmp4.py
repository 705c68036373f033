"""Fragmented MP4 from a Stream's encoded frames, shared by HLS and the DVR: H.264 video and,
when the stream has it, Opus audio, remuxed with PyAV, never transcoded.

Opus goes in as Opus (an ``Opus`` sample entry with a ``dOps`` box): FFmpeg's mov muxer
needs the stream's extradata to be an ``OpusHead``, which a mux-only PyAV stream cannot be
given, so the audio stream is made with a (never used) libopus encoder context whose
extradata is replaced by ours. The FFmpeg PyAV bundles takes Opus in MP4 without
``strict=experimental``. G.711 (PCMU/PCMA) cannot go in: the mp4 muxer refuses it, so such
streams are packaged and recorded without their audio (`muxable_audio`).

A Stream's audio and video clocks need not share an origin (WebRTC tracks start at random
RTP times), so, as the RTMP republish sink and the WebRTC viewers do, the audio is put on the
video's timeline by arrival: the first audio frame is stamped with the stream's latest video
time when it came (`ArrivalQueue` notes it), and later frames keep their distance from it.
Where no audio comes (a stream that announced audio and sends none, Opus DTX), the track is
filled with 20 ms silence packets half a second behind the video: MSE players (hls.js) wait
for every track an init segment declares.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av

from gateway.log import get_logger
from gateway.media.audio_align import AudioAligner
from gateway.media.stream import MediaFrame, Stream, Subscription

log = get_logger(__name__)

# empty_moov: the init segment comes first and needs no sample table; default_base_moof:
# offsets relative to each moof, as CMAF/hls.js expect; skip_trailer: no mfra index at the
# end (a closed muxer only flushes its last fragment).
FMP4_FLAGS = "frag_keyframe+empty_moov+default_base_moof+skip_trailer"
OPUS_RATE = 48000
OPUS_TIME_BASE = Fraction(1, OPUS_RATE)
# Audio codecs (as a Stream names them) an MP4 carries as they are.
MUXABLE_AUDIO = {"opus"}
# 20 ms of Opus silence (CELT fullband, mono, an empty frame): what fills the audio track
# where the stream sent none. A player (MSE, hls.js) waits for every track it was told of:
# an audio track without samples would hold the video still.
OPUS_SILENCE = b"\xf8\xff\xfe"
# How far behind the video the audio track may fall before silence fills it: more than the
# audio's arrival jitter, so that real audio that comes is not placed before the filling.
AUDIO_FILL_LAG = Fraction(1, 2)


def muxable_audio(stream: Stream) -> bool:
    """Whether the stream's audio goes into its MP4s (Opus); False without audio."""
    return stream.audio_codec is not None and stream.audio_codec.name.lower() in MUXABLE_AUDIO


def opus_head(channels: int = 2, pre_skip: int = 0) -> bytes:
    """An ``OpusHead`` (RFC 7845 5.1), mapping family 0: what the muxer turns into ``dOps``.
    No pre-skip: the packets are a live stream's, joined mid-way, not an encoder's first."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, OPUS_RATE, 0, 0)


# Samples at 48 kHz of one Opus frame, by the TOC's config (RFC 6716 3.1).
_OPUS_FRAME = [480, 960, 1920, 2880] * 3 + [480, 960] * 2 + [120, 240, 480, 960] * 4


def opus_samples(packet: bytes) -> int:
    """Samples at 48 kHz an Opus packet holds (RFC 6716 3.2); 0 for an empty or bad one."""
    if not packet:
        return 0
    toc = packet[0]
    frames = toc & 3
    if frames == 0:
        count = 1
    elif frames in (1, 2):
        count = 2
    elif len(packet) > 1:
        count = packet[1] & 0x3F
    else:
        return 0
    return min(count * _OPUS_FRAME[toc >> 3], 5760)  # at most 120 ms


@dataclass(frozen=True, slots=True)
class Fragment:
    """One ``moof``+``mdat``; when its video starts, in seconds on the muxer's timeline
    (None: no video in it); and the time of the keyframe that ended it, where the video
    ends when only keyframes cut fragments (None: the last fragment, or no video)."""

    data: bytes
    start: Fraction | None
    end: Fraction | None = None


def _boxes(data: bytes | memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """(type, payload) of the ISO BMFF boxes in ``data`` (complete ones only)."""
    view = memoryview(data)
    pos = 0
    while pos + 8 <= len(view):
        size, kind = struct.unpack_from(">I4s", view, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", view, pos + 8)
            header = 16
        elif size == 0:
            size = len(view) - pos
        if size < header or pos + size > len(view):
            return
        yield kind, view[pos + header : pos + size]
        pos += size


def _box_size(data: bytearray, pos: int) -> int | None:
    """The size of the box at ``pos`` if it is all in ``data``."""
    if pos + 8 > len(data):
        return None
    (size,) = struct.unpack_from(">I", data, pos)
    if size == 1:
        if pos + 16 > len(data):
            return None
        (size,) = struct.unpack_from(">Q", data, pos + 8)
    if size < 8 or pos + size > len(data):
        return None
    return size


def base_decode_times(moof: bytes | memoryview) -> dict[int, int]:
    """track_ID → ``tfdt`` baseMediaDecodeTime of each ``traf`` of a ``moof`` payload."""
    times: dict[int, int] = {}
    for kind, traf in _boxes(moof):
        if kind != b"traf":
            continue
        track = time = None
        for child, payload in _boxes(traf):
            if child == b"tfhd":
                (track,) = struct.unpack_from(">I", payload, 4)
            elif child == b"tfdt":
                version = payload[0]
                (time,) = struct.unpack_from(">Q" if version == 1 else ">I", payload, 4)
        if track is not None and time is not None:
            times[track] = time
    return times


class _ByteSink:
    """The muxer's output file: collects what it writes (a non-seekable stream for PyAV)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


class Fmp4Muxer:
    """Pre-encoded H.264 Annex-B access units, and Opus packets when ``audio``, into
    fragmented MP4, in memory.

    `write` (video) and `write_audio` return the complete fragments the call produced (a
    fragment is flushed when the next keyframe, or ``fragment_seconds`` of video, reaches
    the muxer; FFmpeg interleaves the two tracks, so that may be a later call); `header`
    holds the ``ftyp`` and ``moov`` once the first packet went in (the avcC comes from its
    SPS/PPS). Video timestamps are in ``time_base`` and must increase; the timeline starts
    at ``origin`` (default: the first video frame's pts), and audio is given in seconds on
    it (see `AudioAligner`)."""

    def __init__(
        self,
        width: int,
        height: int,
        time_base: Fraction,
        *,
        audio: bool = False,
        origin: int | None = None,
        fragment_seconds: float | None = None,
    ) -> None:
        self.time_base = time_base
        self.header: bytes | None = None
        self.audio = audio
        self._sink = _ByteSink()
        options = {
            "movflags": FMP4_FLAGS + "+frag_discont",
            # Hand packets to the mov muxer at once rather than holding video up to 10 s
            # (FFmpeg's default) for audio that may not come: they are given in time order.
            "max_interleave_delta": "1",
            # Each track's first fragment starts at its own first timestamp (tfdt): audio
            # that starts after the video is not moved to 0 (FFmpeg's default without an
            # edit list, which empty_moov cannot have).
            "use_editlist": "0",
            "avoid_negative_ts": "disabled",
        }
        if fragment_seconds is not None:
            # Bounds a fragment (what a crash can lose) when keyframes are far apart.
            options["frag_duration"] = str(round(fragment_seconds * 1_000_000))
        self._container: Any = av.open(self._sink, "w", format="mp4", options=options)
        self._stream = self._container.add_mux_stream("h264", width=width, height=height)
        self._stream.time_base = time_base
        self._audio_stream: Any = None
        self._aligner = AudioAligner()  # the stream's audio clock on this timeline
        if audio:
            stream = self._container.add_stream("libopus", rate=OPUS_RATE)
            stream.codec_context.layout = "stereo"
            stream.codec_context.time_base = OPUS_TIME_BASE
            stream.codec_context.open()  # never fed: it only carries the codec parameters
            stream.codec_context.extradata = opus_head()
            stream.time_base = OPUS_TIME_BASE
            self._audio_stream = stream
        # The timeline's 0: the first video frame's pts (in time_base), given or the first written.
        self.origin = origin
        self._video_track = 1
        self._last_audio: int | None = None  # start of the last audio packet, in samples
        self._audio_end = 0  # where it ends, in samples
        self.silence_packets = 0  # filled in
        self._keyframes: deque[Fraction] = deque()  # times of the keyframes written

    def write(self, data: bytes, pts: int, duration: int, keyframe: bool) -> list[Fragment]:
        """One video access unit (the first must be a keyframe)."""
        if self.origin is None:
            self.origin = pts
        time = (pts - self.origin) * self.time_base
        if keyframe:
            self._keyframes.append(time)
        packet = av.Packet(data)
        packet.pts = packet.dts = pts - self.origin
        packet.duration = max(1, duration)
        packet.time_base = self.time_base
        packet.is_keyframe = keyframe
        packet.stream = self._stream
        fragments = self._mux(packet)
        if self._audio_stream is not None:
            # No audio for a while (none sent, Opus DTX, a stalled source): silence.
            until = (time - AUDIO_FILL_LAG) * OPUS_RATE
            while self._audio_end + 960 <= until:
                self.silence_packets += 1
                fragments += self._mux_audio(OPUS_SILENCE, self._audio_end, 960)
        return fragments

    def write_arrival(self, arrival: Arrival) -> list[Fragment]:
        """An audio frame of the stream, as it came: Opus is put on this muxer's timeline
        (by the video time when it came, `AudioAligner`); anything else, or audio with no
        track or before the first video frame, is left out."""
        frame = arrival.frame
        if self._audio_stream is None or self.origin is None or frame.codec.lower() != "opus":
            return []
        samples = opus_samples(frame.data)
        if not samples:
            return []
        audio = frame.pts * frame.time_base
        self._aligner.align(audio, (arrival.video_pts - self.origin) * self.time_base)
        start = self._aligner.place(audio)
        return self.write_audio(frame.data, start, samples)

    def write_audio(self, data: bytes, pts: Fraction, duration: int) -> list[Fragment]:
        """One Opus packet starting ``pts`` seconds after the first video frame,
        ``duration`` samples at 48 kHz long. Audio before the video, or not after the
        last audio packet, is left out. Where the stream sends no audio, the video's writes
        fill the track with silence up to `AUDIO_FILL_LAG` behind the video."""
        if self._audio_stream is None or self.origin is None or pts < 0:
            return []
        start = round(pts * OPUS_RATE)
        if self._last_audio is not None and start <= self._last_audio:
            return []
        return self._mux_audio(data, start, duration)

    def _mux_audio(self, data: bytes, start: int, duration: int) -> list[Fragment]:
        self._last_audio, self._audio_end = start, start + duration
        packet = av.Packet(data)
        packet.pts = packet.dts = start
        packet.duration = max(1, duration)
        packet.time_base = OPUS_TIME_BASE
        packet.is_keyframe = True
        packet.stream = self._audio_stream
        return self._mux(packet)

    def _mux(self, packet: av.Packet) -> list[Fragment]:
        self._container.mux_one(packet)
        if self.header is None:
            self._take_header()
            if self.header is None:
                return []
        return self._fragments()

    def _take_header(self) -> None:
        """The ``ftyp`` and ``moov`` the muxer wrote when it opened, once complete."""
        data, pos = self._sink.data, 0
        while (size := _box_size(data, pos)) is not None:
            kind = data[pos + 4 : pos + 8]
            pos += size
            if kind == b"moov":
                self.header = bytes(data[:pos])
                del data[:pos]
                return

    def _fragments(self) -> list[Fragment]:
        """The complete ``moof``+``mdat`` pairs written so far."""
        data, out, pos = self._sink.data, [], 0
        while (moof := _box_size(data, pos)) is not None:
            if (mdat := _box_size(data, pos + moof)) is None:
                break
            times = base_decode_times(bytes(data[pos + 8 : pos + moof]))
            video = times.get(self._video_track)
            start = end = None
            if video is not None:
                start = Fraction(video) * self._video_time_base()
                while self._keyframes and self._keyframes[0] <= start:
                    self._keyframes.popleft()
                end = self._keyframes[0] if self._keyframes else None
            out.append(Fragment(bytes(data[pos : pos + moof + mdat]), start, end))
            pos += moof + mdat
        del data[:pos]
        return out

    def _video_time_base(self) -> Fraction:
        # The muxer's timescale for the track (it may choose another than ours).
        return Fraction(self._stream.time_base or self.time_base)

    def close(self) -> list[Fragment]:
        """Flush the last fragment and free the muxer; returns the fragments not returned yet."""
        with contextlib.suppress(av.FFmpegError, ValueError):
            self._container.close()
        if self.header is None:
            return []
        return self._fragments()


@dataclass(slots=True)
class Arrival:
    frame: MediaFrame
    video_pts: int  # the stream's latest video pts when the frame came


class ArrivalQueue:
    """A subscription's video and audio frames in the order they came, each with the
    stream's latest video time at that moment, in one bounded queue. A full queue refuses
    frames: video then skips to the next keyframe (the subscription's rule), audio loses
    the frame."""

    def __init__(self, subscription: Subscription, max_frames: int) -> None:
        self.stream = subscription.stream
        self.max_frames = max_frames
        self._items: deque[Arrival] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        subscription.video.attach(self._put)
        subscription.audio.attach(self._put)

    def _put(self, frame: MediaFrame) -> bool:
        if self._closed:
            return True
        if len(self._items) >= self.max_frames:
            return False
        self._items.append(Arrival(frame, self.stream.last_video_pts))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    async def get(self) -> Arrival | None:
        """The next frame, or None once the stream ended (or `close`) and all was taken."""
        while not self._items:
            if self._closed or self.stream.ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """Also what the owner calls from `on_stream_end`: wakes a waiting `get`."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
