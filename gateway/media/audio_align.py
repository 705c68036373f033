"""A stream's audio put on a sink's timeline by arrival, for the sinks that mux audio with
video (the fMP4 of HLS and the DVR, the RTMP republish).

A Stream's audio and video clocks need not share an origin (WebRTC tracks start at random
RTP times) and the Stream keeps no wall time per frame: arriving together is the relation
there is. The first audio frame is placed where the stream's latest video frame was when it
came (the latest, not the first a sink sent, which may be a replayed one up to half a
second old); later audio frames keep their distance from it on their own clock."""

from __future__ import annotations

from fractions import Fraction


class AudioAligner:
    """The offset from the stream's audio clock to one sink's timeline, fixed once. Both
    are in the same unit, whichever the sink uses (seconds, milliseconds)."""

    def __init__(self) -> None:
        self.offset: Fraction | None = None

    def align(self, audio: Fraction, live_video: Fraction) -> None:
        """The audio frame at ``audio`` (on the stream's audio clock) came in while the
        stream's latest video frame was at ``live_video`` (on the sink's timeline). Only
        the first call counts: the two clocks run at the same speed."""
        if self.offset is None:
            self.offset = live_video - audio

    def place(self, audio: Fraction) -> Fraction:
        """Where audio at ``audio`` on the stream's clock goes on the timeline (after `align`)."""
        assert self.offset is not None, "align first"
        return audio + self.offset
