"""Telemetry in HLS: `HlsPackager` with the stream's telemetry puts each sample in its
segments as timed ID3 in an ``emsg`` box before the ``moof`` of the fragment that holds the
frame the sample came after. Read back with the spec-side readers and PyAV/ffprobe."""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction
from pathlib import Path

import av

from gateway.media.emsg import SCHEME_ID3, TELEMETRY_DESCRIPTION
from gateway.media.sinks.fmp4 import base_decode_times
from gateway.media.sinks.hls import HlsPackager
from gateway.media.stream import Codec, MediaFrame, Stream
from gateway.telemetry.hub import TelemetryHub
from tests.telemetry_boxes import Sample, parse_emsg, parse_id3, parse_txxx, top_boxes
from tests.unit.test_hls import Units, clips, ffprobe_frames

__all__ = ["clips"]  # the fixture

TB = Fraction(1, 90000)


async def test_segments_carry_each_sample_in_an_emsg_before_its_fragment(
    clips: tuple[Units, Units], tmp_path: Path
) -> None:
    big, _ = clips
    stream = Stream("cam/telemetry")
    stream.set_codecs(Codec("H264", 90000), None)
    hub = TelemetryHub(lambda name: stream if name == stream.name else None)
    packager = HlsPackager(stream, segment_target=1.0, window=5, telemetry=hub)
    plain = HlsPackager(stream, segment_target=1.0, window=5)  # the same stream, no telemetry
    after: dict[int, int] = {}  # sample n -> the frame (index) it came after
    try:
        for i, (data, keyframe) in enumerate(big):
            stream.push(MediaFrame("video", "H264", data, 5000 + i * 3000, TB, keyframe))
            if i % 3 == 1:
                hub.publish(Sample("SN", len(after), height=i / 2), [stream.name])
                after[len(after)] = i
            await asyncio.sleep(0)
        assert len(packager.segments) == 3  # keyframes at 0, 1, 2, 3 s: three finished
    finally:
        await packager.stop()
        await plain.stop()
    assert hub.subscribers() == 0  # the packager let go of the telemetry

    init = packager.inits[0]
    assert init == plain.inits[0]
    with av.open(str(_write(tmp_path / "init.mp4", init))) as container:
        timescale = container.streams.video[0].time_base.denominator
    seen: list[int] = []
    for segment, bare in zip(packager.segments, plain.segments, strict=True):
        boxes = top_boxes(segment.data)
        # Without the emsg boxes, the segment is the one the packager without telemetry made.
        assert b"".join(box for kind, box in boxes if kind != b"emsg") == bare.data
        kinds = [kind for kind, _ in boxes]
        assert kinds[0] == b"emsg" and kinds[-2:] == [b"moof", b"mdat"]
        # Fragment starts (tfdt, seconds) in the order of their moofs; an emsg's fragment is the next moof.
        starts = [
            Fraction(base_decode_times(box[8:])[1], timescale) for kind, box in boxes if kind == b"moof"
        ]
        segment_end = starts[0] + Fraction(segment.duration).limit_denominator(1000)
        fragment = 0
        for kind, box in boxes:
            if kind == b"moof":
                fragment += 1
                continue
            if kind != b"emsg":
                continue
            emsg = parse_emsg(box)
            assert (emsg.version, emsg.scheme_id_uri, emsg.timescale) == (1, SCHEME_ID3, 90000)
            time = Fraction(emsg.presentation_time, emsg.timescale)
            end = starts[fragment + 1] if fragment + 1 < len(starts) else segment_end
            assert starts[fragment] <= time < end, (segment.sequence, time, starts)
            [(frame_id, body)] = parse_id3(emsg.message)
            description, value = parse_txxx(body)
            sample = json.loads(value)
            assert frame_id == "TXXX" and description == TELEMETRY_DESCRIPTION
            assert sample == Sample("SN", sample["n"], height=after[sample["n"]] / 2).to_json()
            # On the segments' media timeline: exactly the frame the sample came after.
            assert time == Fraction(after[sample["n"]], 30)
            seen.append(sample["n"])
    # The samples of the three segments' 90 frames, each once, in order.
    assert seen == [n for n, i in after.items() if i < 89]
    # PyAV and ffprobe read the segments with their emsg boxes as before.
    whole = _write(tmp_path / "all.mp4", init + b"".join(s.data for s in packager.segments))
    assert ffprobe_frames(whole) == (320, 240, 90)
    with av.open(str(whole)) as container:
        assert len([p for p in container.demux(video=0) if p.size]) == 90


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
