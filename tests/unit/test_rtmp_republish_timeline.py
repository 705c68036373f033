"""gateway.media.sinks.rtmp_push.Timeline: one republish connection's RTMP timestamps, video
from its first frame, audio on the same timeline from clocks with another origin, neither
kind ever going back."""

from __future__ import annotations

from fractions import Fraction

from gateway.media.sinks.rtmp_push import Timeline

VIDEO = Fraction(1, 90000)


def test_video_starts_at_zero_and_never_goes_back() -> None:
    timeline = Timeline()
    assert timeline.video(900_000, VIDEO) == 0  # 10 s on the stream's clock
    assert timeline.video(903_000, VIDEO) == 33
    assert timeline.video(901_500, VIDEO) == 33  # a step back: held
    assert timeline.video(906_000, VIDEO) == 67


def test_audio_waits_for_video() -> None:
    timeline = Timeline()
    assert not timeline.align_audio(5_000, 0)
    assert timeline.audio_offset is None


def test_audio_is_aligned_with_the_live_video_not_the_first_frame_sent() -> None:
    """The first video frames sent may be a replayed GOP up to half a second old: the first
    audio frame goes with the stream's latest video frame, whatever its own clock says."""
    timeline = Timeline()
    timeline.video(900_000, VIDEO)  # the GOP's keyframe, 0 ms
    # Audio at 77 s on its own clock arrives while the stream's video is at 10.5 s.
    assert timeline.align_audio(77_000, 945_000)
    assert timeline.audio(77_000) == 500
    assert timeline.audio(77_020) == 520
    # Later frames keep the same relation: the clocks run at the same speed.
    assert timeline.align_audio(77_040, 999_999)
    assert timeline.audio(77_040) == 540


def test_audio_never_goes_back_nor_below_zero() -> None:
    timeline = Timeline()
    timeline.video(0, VIDEO)
    assert timeline.align_audio(1_000, 0)
    assert timeline.audio(979) == 0  # the AAC encoder's priming, stamped before the first sample
    assert timeline.audio(1_020) == 20
    assert timeline.audio(1_010) == 20
    assert timeline.audio(1_040) == 40
