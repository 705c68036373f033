"""The shared fragmented-MP4 muxer with data: the H.264 test clip and Opus packets from PyAV's
libopus encoder (a 440 Hz tone) muxed together, read back with PyAV: both tracks, their
timestamps and durations, fragments cut at keyframes with both tracks in them; Opus packet
durations from the TOC; the audio aligned on the video's timeline by arrival; and the
HLS packager's segments with audio, decoded by ffprobe."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import structlog

from gateway.media.audio_align import AudioAligner
from gateway.media.sinks.fmp4 import (
    Fmp4Muxer,
    Fragment,
    base_decode_times,
    muxable_audio,
    opus_head,
    opus_samples,
)
from gateway.media.sinks.hls import HlsPackager
from gateway.media.sinks.recorder import Recorder
from gateway.media.stream import Codec, MediaFrame, Stream
from gateway.media.synthetic import make_h264_clip, read_access_units
from tests.conftest import dominant_frequency

CACHE = Path(os.environ.get("SKYRELAY_TEST_CACHE", Path.home() / ".cache" / "skyrelay-tests"))
Units = list[tuple[bytes, bool]]
VIDEO_TB = Fraction(1, 90000)
OPUS_TB = Fraction(1, 48000)


@pytest.fixture(scope="module")
def units() -> Units:
    """4 s of 320x240 at 30 fps, a keyframe a second."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return read_access_units(
        make_h264_clip(CACHE, width=320, height=240, fps=30, seconds=4, bitrate=300_000, gop=30)
    )


@pytest.fixture(scope="module")
def opus_packets() -> list[bytes]:
    """5 s of a 440 Hz tone as 20 ms Opus packets, 48 kHz stereo."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "stereo", "s16"
    encoder.time_base, encoder.bit_rate = OPUS_TB, 64_000
    encoder.open()
    packets: list[bytes] = []
    for i in range(250):
        t = (np.arange(960) + i * 960) / 48000
        tone = (10000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.stack([tone, tone]).T.reshape(1, -1).copy(), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, OPUS_TB
        packets += [bytes(packet) for packet in encoder.encode(frame)]
    return packets


def mux(units: Units, packets: list[bytes], audio_start: Fraction) -> tuple[Fmp4Muxer, list[Fragment]]:
    """The clip from pts 900000 (a source's clock), and audio from ``audio_start`` seconds
    on the timeline, given as they would arrive: each packet once the video reached it."""
    muxer = Fmp4Muxer(320, 240, VIDEO_TB, audio=True)
    fragments: list[Fragment] = []
    sent = 0
    for i, (data, keyframe) in enumerate(units):
        now = Fraction(i, 30)
        while sent < len(packets) and audio_start + Fraction(sent * 960, 48000) < now:
            fragments += muxer.write_audio(packets[sent], audio_start + Fraction(sent * 960, 48000), 960)
            sent += 1
        fragments += muxer.write(data, 900000 + i * 3000, 3000, keyframe)
    fragments += muxer.close()
    return muxer, fragments


def test_video_and_opus_read_back_with_timestamps_and_durations(
    units: Units, opus_packets: list[bytes], tmp_path: Path
) -> None:
    muxer, fragments = mux(units, opus_packets, Fraction(1, 4))
    assert muxer.header is not None and b"Opus" in muxer.header and b"dOps" in muxer.header
    path = tmp_path / "av.mp4"
    path.write_bytes(muxer.header + b"".join(f.data for f in fragments))

    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 320, 240)
        assert (audio.codec_context.name, audio.sample_rate, audio.codec_context.channels) == (
            "opus",
            48000,
            2,
        )
        times: dict[str, list[Fraction]] = {"video": [], "audio": []}
        keyframes = []
        for packet in container.demux():
            if packet.size == 0 or packet.pts is None:
                continue
            assert packet.time_base is not None
            times[packet.stream.type].append(packet.pts * packet.time_base)
            if packet.stream.type == "video" and packet.is_keyframe:
                keyframes.append(packet.pts * packet.time_base)
    # Every frame, in pts order per track, on one timeline from the first video frame.
    assert times["video"] == [Fraction(i, 30) for i in range(len(units))]
    assert keyframes == [0, 1, 2, 3]
    audio_times = times["audio"]
    assert audio_times[0] == Fraction(1, 4)  # where it was put: not moved to 0
    assert all(b - a == Fraction(1, 50) for a, b in zip(audio_times, audio_times[1:], strict=False))
    assert audio_times[-1] < 4 and 4 - audio_times[-1] <= Fraction(1, 20)  # up to the video's end

    # Decoded: the tone, for (about) as long as the video.
    with av.open(str(path)) as container:
        decoded = list(container.decode(audio=0))
        container.seek(0)
        video_frames = sum(1 for _ in container.decode(video=0))
    assert video_frames == len(units)
    samples = np.concatenate([frame.to_ndarray()[0] for frame in decoded])
    assert len(samples) == len(audio_times) * 960
    assert dominant_frequency(samples[48000:96000], 48000) == pytest.approx(440, abs=5)


def test_fragments_start_at_keyframes_with_both_tracks(units: Units, opus_packets: list[bytes]) -> None:
    muxer, fragments = mux(units, opus_packets, Fraction(0))
    assert [(f.start, f.end) for f in fragments] == [(0, 1), (1, 2), (2, 3), (3, None)]
    for fragment in fragments:
        assert fragment.data[4:8] == b"moof"
        times = base_decode_times(fragment.data[8 : int.from_bytes(fragment.data[:4], "big")])
        assert set(times) == {1, 2}  # video and audio in every fragment
        assert fragment.start is not None
        # The audio of a fragment starts with its video (20 ms packets, 33 ms frames).
        assert abs(Fraction(times[2], 48000) - fragment.start) <= Fraction(1, 30)


def test_audio_before_the_video_or_going_back_is_left_out(units: Units, opus_packets: list[bytes]) -> None:
    muxer = Fmp4Muxer(320, 240, VIDEO_TB, audio=True)
    assert muxer.write_audio(opus_packets[0], Fraction(0), 960) == []  # no video yet: no timeline
    muxer = Fmp4Muxer(320, 240, VIDEO_TB, audio=True, origin=0)
    assert muxer.write_audio(opus_packets[0], Fraction(-1, 50), 960) == []  # before the first keyframe
    muxer.write_audio(opus_packets[1], Fraction(1, 50), 960)
    muxer.write_audio(opus_packets[2], Fraction(1, 50), 960)  # the same time again: left out
    muxer.write_audio(opus_packets[3], Fraction(1, 100), 960)  # back: left out
    muxer.write_audio(opus_packets[4], Fraction(2, 50), 960)
    fragments = [
        f for i, (data, key) in enumerate(units[:31]) for f in muxer.write(data, i * 3000, 3000, key)
    ]
    fragments += muxer.close()
    assert muxer.header is not None
    with av.open(io.BytesIO(muxer.header + b"".join(f.data for f in fragments))) as c:
        audio = [p.pts * p.time_base for p in c.demux(audio=0) if p.pts is not None]
    assert audio[:2] == [Fraction(1, 50), Fraction(2, 50)]
    # Then silence, up to half a second behind the video (which ends at 1 s).
    assert all(b - a == Fraction(1, 50) for a, b in zip(audio, audio[1:], strict=False))
    assert audio[-1] + Fraction(1, 50) == Fraction(1, 2)


def test_silence_fills_a_track_the_stream_sends_nothing_on(units: Units, opus_packets: list[bytes]) -> None:
    """A player waits for every track of the init segment: an audio track the stream sends
    nothing on (yet) is filled with silence, behind the video; real audio that comes goes
    on after it."""
    muxer = Fmp4Muxer(320, 240, VIDEO_TB, audio=True)
    fragments: list[Fragment] = []
    for i, (data, keyframe) in enumerate(units):
        fragments += muxer.write(data, i * 3000, 3000, keyframe)
        if i >= 90:  # real audio from 3 s on (as it would be placed: with the live video)
            fragments += muxer.write_audio(opus_packets[i], Fraction(i, 30), 960)
    fragments += muxer.close()
    assert muxer.header is not None
    assert muxer.silence_packets == round((3 - Fraction(1, 2)) * 50)
    with av.open(io.BytesIO(muxer.header + b"".join(f.data for f in fragments))) as container:
        times = [p.pts * p.time_base for p in container.demux(audio=0) if p.pts is not None]
        container.seek(0)
        decoded = [frame.to_ndarray() for frame in container.decode(audio=0)]
    assert times[0] == 0 and all(b > a for a, b in zip(times, times[1:], strict=False))
    assert times[124] == Fraction(124, 50) and times[125] == 3  # silence to 2.5 s, then the tone
    assert not np.abs(np.concatenate(decoded[:100], axis=1)).any()
    assert np.abs(np.concatenate(decoded[-10:], axis=1)).max() > 0.1


def test_video_only_muxer_is_unchanged(units: Units) -> None:
    muxer = Fmp4Muxer(320, 240, VIDEO_TB)
    fragments = [f for i, (data, key) in enumerate(units) for f in muxer.write(data, i * 3000, 3000, key)]
    # Without audio nothing waits: writing keyframe n gives the fragment before it.
    assert [(f.start, f.end) for f in fragments] == [(0, 1), (1, 2), (2, 3)]
    fragments += muxer.close()
    assert muxer.header is not None and b"Opus" not in muxer.header
    with av.open(io.BytesIO(muxer.header + b"".join(f.data for f in fragments))) as container:
        assert [s.type for s in container.streams] == ["video"]


@pytest.mark.parametrize(
    ("packet", "samples"),
    [
        (bytes([0xFC, 1, 2]), 960),  # CELT 20 ms, one frame
        (bytes([0xF8 | 1, 1]), 1920),  # CELT 20 ms, two frames
        (bytes([0x78 | 3, 3, 0]), 2880),  # SILK 20 ms... config 15 is hybrid 20 ms: 3 of them
        (bytes([0x08, 0]), 960),  # SILK NB 20 ms
        (bytes([0x18 | 3, 2]), 5760),  # SILK 60 ms, 2 frames
        (bytes([0x80]), 120),  # CELT 2.5 ms
        (b"", 0),
        (bytes([0x03]), 0),  # a frame count byte missing
    ],
)
def test_opus_packet_durations(packet: bytes, samples: int) -> None:
    assert opus_samples(packet) == samples


def test_opus_head_and_muxable_codecs() -> None:
    head = opus_head()
    assert head[:8] == b"OpusHead" and len(head) == 19 and head[9] == 2
    stream = Stream("s")
    assert not muxable_audio(stream)
    stream.set_codecs(Codec("H264", 90000), Codec("opus", 48000))
    assert muxable_audio(stream)
    for g711 in ("PCMU", "PCMA"):
        stream.set_codecs(Codec("H264", 90000), Codec(g711, 8000))
        assert not muxable_audio(stream)


def test_audio_is_aligned_by_arrival() -> None:
    """Audio and video clocks with different origins (WebRTC's random RTP times): the first
    audio frame goes where the live video was when it came; the next keep their distance."""
    aligner = AudioAligner()
    first = 123_456_000 * OPUS_TB  # seconds on the stream's audio clock
    # The muxer's first video frame at pts 9_000_000; the live video at 9_090_000 (1 s later).
    aligner.align(first, (9_090_000 - 9_000_000) * VIDEO_TB)
    assert aligner.place(first) == 1
    later = (123_456_000 + 960) * OPUS_TB
    aligner.align(later, (9_999_999 - 9_000_000) * VIDEO_TB)  # only the first counts
    assert aligner.place(later) == 1 + Fraction(1, 50)


def ffprobe(path: Path) -> list[dict[str, object]]:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-of", "json",
         "-show_entries", "stream=codec_name,nb_read_frames", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)["streams"]


async def test_hls_segments_carry_the_audio(units: Units, opus_packets: list[bytes], tmp_path: Path) -> None:
    """A stream with video and Opus pushed together: every segment starts at a keyframe, a
    second long as before, and init + segments decode with both tracks."""
    stream = Stream("cam/av")
    stream.set_codecs(Codec("H264", 90000), Codec("opus", 48000))
    packager = HlsPackager(stream, segment_target=1.0, window=3)
    try:
        # The audio clock starts elsewhere (as WebRTC's does): 20 ms packets between frames.
        sent = 0
        for i, (data, keyframe) in enumerate(units):
            stream.push(MediaFrame("video", "H264", data, 5000 + i * 3000, VIDEO_TB, keyframe))
            while sent * 960 < (i + 1) * 1600:
                stream.push(MediaFrame("audio", "opus", opus_packets[sent], 777 + sent * 960, OPUS_TB, True))
                sent += 1
            await asyncio.sleep(0)
        assert [(s.sequence, s.duration) for s in packager.segments] == [(0, 1.0), (1, 1.0), (2, 1.0)]
        init = packager.inits[0]
        assert b"avc1" in init and b"Opus" in init and b"dOps" in init
        path = tmp_path / "hls.mp4"
        path.write_bytes(init + b"".join(s.data for s in packager.segments))
        streams = ffprobe(path)
        assert [s["codec_name"] for s in streams] == ["h264", "opus"]
        assert int(str(streams[0]["nb_read_frames"])) == 90
        # 3 s of 20 ms packets (from the first video frame: it came first), give or take
        # the one that came with the keyframe closing the last segment.
        assert 149 <= int(str(streams[1]["nb_read_frames"])) <= 152
        # In sync: the first audio packet came with the first video frame, and is placed
        # there; the others follow it 20 ms apart, as on their own clock.
        with av.open(str(path)) as container:
            audio = [p.pts * p.time_base for p in container.demux(audio=0) if p.pts is not None]
        assert audio[:3] == [0, Fraction(1, 50), Fraction(2, 50)]
        assert all(b - a == Fraction(1, 50) for a, b in zip(audio, audio[1:], strict=False))
    finally:
        await packager.stop()
    assert not stream.subscriptions


async def test_g711_streams_are_packaged_and_recorded_video_only(units: Units, tmp_path: Path) -> None:
    """MP4 cannot carry PCMU/PCMA: segments and files have the video alone, and each sink
    says so once, however many init segments or files it makes."""
    stream = Stream("cam/pcmu")
    stream.set_codecs(Codec("H264", 90000), Codec("PCMU", 8000))
    with structlog.testing.capture_logs() as logs:
        packager = HlsPackager(stream, segment_target=1.0, window=3)
        recorder = Recorder(stream, tmp_path, segment_seconds=1.0)
        recorder.start()
        try:
            for i, (data, keyframe) in enumerate(units):
                stream.push(MediaFrame("video", "H264", data, i * 3000, VIDEO_TB, keyframe))
                stream.push(MediaFrame("audio", "PCMU", b"\xff" * 267, i * 267, Fraction(1, 8000), True))
                await asyncio.sleep(0)
            assert len(packager.segments) == 3
        finally:
            await packager.stop()
            await recorder.stop()
    init = packager.inits[0]
    assert b"avc1" in init and b"soun" not in init
    path = tmp_path / "hls.mp4"
    path.write_bytes(init + b"".join(s.data for s in packager.segments))
    assert [s["codec_name"] for s in ffprobe(path)] == ["h264"]
    assert len(recorder.files) >= 3  # a file a second
    for file in recorder.files:
        assert [s["codec_name"] for s in ffprobe(file)] == ["h264"]
    events = [e["event"] for e in logs]
    assert events.count("hls_audio_left_out") == 1 and events.count("recording_audio_left_out") == 1
    told = next(e for e in logs if e["event"] == "hls_audio_left_out")
    assert told["codec"] == "PCMU" and told["stream"] == "cam/pcmu"
