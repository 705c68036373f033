"""Telemetry in HLS on loopback: `HlsService` packaging a stream fed in real time from the
clip while samples are published to the registry's telemetry hub; segments fetched over HTTP
carry the samples as timed ID3 ``emsg`` boxes with times in their segment's video, and ffmpeg
still decodes the whole playlist."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from fractions import Fraction
from pathlib import Path

from gateway.media.emsg import SCHEME_ID3
from gateway.media.sinks.fmp4 import base_decode_times
from gateway.telemetry.hub import TelemetryHub
from tests.integration.test_hls import NAME, HlsServer, fetch, hls_server, run
from tests.telemetry_boxes import Sample, parse_emsg, parse_id3, parse_txxx, top_boxes

__all__ = ["hls_server"]  # the fixture


async def publish(hub: TelemetryHub, count: list[int]) -> None:
    """10 Hz of samples for the stream until cancelled."""
    while True:
        hub.publish(Sample("SN", count[0]), [NAME])
        count[0] += 1
        await asyncio.sleep(0.1)


async def test_segments_over_http_carry_telemetry(hls_server: HlsServer, tmp_path: Path) -> None:
    hub = hls_server.registry.telemetry
    count = [0]
    feeder = asyncio.create_task(publish(hub, count))
    try:
        status, _, body = await fetch(hls_server.url(NAME))
        assert status == 200
        packager = hls_server.service.packagers[NAME]
        assert hub.subscribers(NAME) == 1  # the packager's
        first = packager.next_sequence
        async with asyncio.timeout(20):
            while packager.next_sequence < first + 3:
                await asyncio.sleep(0.2)
        status, _, body = await fetch(hls_server.url(NAME))
        playlist = body.decode()
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    status, _, init = await fetch(hls_server.url(NAME, "init-0.mp4"))
    assert status == 200
    timescale = 90000  # what the muxer keeps for a 1/90000 stream (checked below against PyAV)
    sequences = [int(s) for s in re.findall(r"^seg-(\d+)\.m4s$", playlist, re.M)]
    durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", playlist)]
    numbers: list[int] = []
    data = b""
    for sequence, duration in zip(sequences, durations, strict=True):
        status, _, segment = await fetch(hls_server.url(NAME, f"seg-{sequence}.m4s"))
        assert status == 200
        data += segment
        boxes = top_boxes(segment)
        moofs = [box for kind, box in boxes if kind == b"moof"]
        start = Fraction(base_decode_times(moofs[0][8:])[1], timescale)
        emsgs = [parse_emsg(box) for kind, box in boxes if kind == b"emsg"]
        assert emsgs, f"segment {sequence} has no telemetry"
        for emsg in emsgs:
            assert emsg.scheme_id_uri == SCHEME_ID3
            time = Fraction(emsg.presentation_time, emsg.timescale)
            assert start <= time < start + Fraction(duration).limit_denominator(1000), (sequence, time)
            [(_, frame)] = parse_id3(emsg.message)
            sample = json.loads(parse_txxx(frame)[1])
            assert sample == Sample("SN", sample["n"]).to_json()
            numbers.append(sample["n"])
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    whole = tmp_path / "all.mp4"
    whole.write_bytes(init + data)
    code, out, err = await run(
        "ffprobe", "-v", "error", "-count_frames", "-of", "json",
        "-show_entries", "stream=codec_name,nb_read_frames,time_base", str(whole),
    )  # fmt: skip
    assert code == 0, err
    [stream] = json.loads(out)["streams"]
    assert stream["codec_name"] == "h264" and int(stream["nb_read_frames"]) > 0
    assert stream["time_base"] == f"1/{timescale}"
    # ffmpeg decodes the live playlist, emsg boxes and all, without an error.
    code, _, err = await run(
        "ffmpeg", "-v", "error", "-nostdin", "-i", hls_server.url(NAME), "-frames:v", "30", "-f", "null", "-",
    )  # fmt: skip
    assert code == 0 and not err.strip(), err
