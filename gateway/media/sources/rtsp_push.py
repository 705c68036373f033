"""RTSP push in: a publisher's ANNOUNCE/RECORD session (ffmpeg ``-f rtsp``, OBS with a plugin,
an encoder) as the source of a Stream, named by the URL's path.

The RTSP server (servers/rtsp.py) owns the connection and the sans-I/O session; it opens an
`RtspPush` when it accepts an ANNOUNCE and hands it what the session depacketized. The push
claims the name (refused while another source has it), relays H.264 and, when the SDP has
one, an Opus/PCMU/PCMA audio track, or an AAC one transcoded to Opus; other tracks are
dropped. When the publisher
tears down or goes away, `end` releases the stream and its viewers get the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from fractions import Fraction

from gateway.log import get_logger
from gateway.media.h264 import sps_dimensions
from gateway.media.registry import StreamRegistry
from gateway.media.rtsp.record import AudioUnit, PushTrack
from gateway.media.rtsp.rtp import AccessUnit
from gateway.media.sources.rtsp_audio import RtspAudioFeed
from gateway.media.stream import NO_FEEDBACK, Codec, MediaFrame, SourceFeedback, Stream

log = get_logger(__name__)

H264 = Codec("H264", 90000, {"packetization-mode": "1"})

# Whether a publisher may push to a stream name: (name, URL query) -> None to allow, or the
# reason it may not (sent back in the 403 answer).
AuthorizePublish = Callable[[str, str], Awaitable[str | None]]


class RtspPush:
    """One publishing RTSP session as the source of a Stream."""

    def __init__(self, registry: StreamRegistry, name: str, tracks: tuple[PushTrack, ...], peer: str) -> None:
        """Claims ``name``: raises StreamNameInUse when it already has a source."""
        self.registry = registry
        self.peer = peer
        self.video = next(track for track in tracks if track.h264)
        self.audio = next((track for track in tracks if track.audio_codec is not None), None)
        self.dropped_tracks = [t for t in tracks if t is not self.video and t is not self.audio]
        self.frames = 0
        self.ended = False
        self.stream: Stream = registry.claim(name)
        self.audio_feed = RtspAudioFeed(self.audio) if self.audio is not None else None
        audio = self.audio_feed.codec if self.audio_feed is not None else None
        self.stream.set_codecs(H264, audio)
        self.stream.attach_source(self, "rtsp-push")
        if self.video.sps is not None:
            # The SDP's SPS gives the size before the first keyframe arrives.
            with contextlib.suppress(ValueError, IndexError):
                self.stream.set_dimensions(*sps_dimensions(self.video.sps))
        self._video_base = Fraction(1, self.video.clock_rate)
        self._log = log.bind(stream=name, peer=peer)
        self._log.info(
            "rtsp_push_announced",
            audio=audio.name if audio else None,
            dropped=[f"{t.kind}/{t.encoding}" for t in self.dropped_tracks],
        )

    async def feedback(self) -> SourceFeedback:
        return NO_FEEDBACK  # not counted for pushes

    def request_keyframe(self) -> None:
        """RTSP has no way to ask a publisher for one: viewers start from the cached keyframe."""

    def media(self, unit: AccessUnit | AudioUnit) -> None:
        if self.ended:
            return
        if isinstance(unit, AccessUnit):
            if unit.dimensions is not None:
                self.stream.set_dimensions(*unit.dimensions)
            self.stream.push(
                MediaFrame("video", "H264", unit.data, unit.timestamp, self._video_base, unit.keyframe)
            )
            self.frames += 1
        elif self.audio_feed is not None:
            self.audio_feed.push(self.stream, unit)

    def end(self, reason: str) -> None:
        """The publisher is gone: the stream ends with it, its name is free again."""
        if self.ended:
            return
        self.ended = True
        self.stream.detach_source(self)
        self.registry.release(self.stream)
        self._log.info("rtsp_push_ended", reason=reason, frames=self.frames, audio_frames=self.audio_frames)

    @property
    def audio_frames(self) -> int:
        return self.audio_feed.frames if self.audio_feed is not None else 0
