"""RTMP republishing (WCS ``push/*``) over loopback: a Stream fed from the test clip is
published to the gateway's own RTMP ingest (another registry) and to ffmpeg listening as an
RTMP server, survives the far end restarting, and is driven through the REST API. Audio goes
as AAC: ffmpeg publishing H.264 and an Opus tone over RTSP is republished to ffmpeg, and
G.711 audio that starts late reaches our own ingest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import av
import numpy as np
import structlog
from aiohttp import web

from gateway.app import Gateway
from gateway.http.rest_api import WcsRestApi
from gateway.media import h264
from gateway.media.ingest_keys import IngestKeys
from gateway.media.registry import StreamRegistry
from gateway.media.rtmp.protocol import PublishRequested, RtmpServerConnection
from gateway.media.sinks.rtmp_push import RepublishStatus, RtmpRepublish, RtmpRepublishes
from gateway.media.sources.rtmp import H264, RtmpIngestServer
from gateway.media.stream import Codec, MediaFrame, Stream, Subscription
from tests.conftest import dominant_frequency, free_port
from tests.integration.conftest import AccessUnits
from tests.integration.test_rtsp_push import ffmpeg_push

FAST = (0.2, 1.0)  # reconnect backoff for tests: retry soon, never wait long


class Quiet:
    """A StreamListener that needs to hear nothing (and a Source that makes no keyframes)."""

    def request_keyframe(self) -> None:
        pass

    def on_video_format(self, width: int, height: int) -> None:
        pass

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        pass

    def on_stream_end(self, info: str | None) -> None:
        pass


class ClipSource:
    """Feeds stream ``name`` with the clip's access units at 30 fps, looping, from pts 0;
    `add_audio` adds audio frames from then on."""

    def __init__(self, registry: StreamRegistry, name: str, units: AccessUnits) -> None:
        self.registry = registry
        self.units = units
        self.stream = registry.claim(name)
        self.stream.set_codecs(H264, None)
        self.stream.attach_source(self, "test")
        self._tasks = [asyncio.create_task(self._run())]

    async def _run(self) -> None:
        index = 0
        while True:
            data, keyframe = self.units[index % len(self.units)]
            self.stream.push(MediaFrame("video", "H264", data, index * 3000, Fraction(1, 90000), keyframe))
            index += 1
            await asyncio.sleep(1 / 30)

    def add_audio(self, codec: Codec, frames: list[bytes], samples: int, origin: int) -> None:
        """From now on also ``frames`` of ``codec`` (``samples`` each), looping, in real
        time, their pts from ``origin`` on the codec's clock (not the video's origin)."""
        self.stream.set_codecs(H264, codec)
        self._tasks.append(asyncio.create_task(self._audio(codec, frames, samples, origin)))

    async def _audio(self, codec: Codec, frames: list[bytes], samples: int, origin: int) -> None:
        loop, time_base = asyncio.get_running_loop(), Fraction(1, codec.clock_rate)
        start, index = loop.time(), 0
        while True:
            # Paced by the clock, not by sleeps: the audio keeps up with the time it stands for.
            while index * samples * time_base <= loop.time() - start:
                data = frames[index % len(frames)]
                self.stream.push(
                    MediaFrame("audio", codec.name, data, origin + index * samples, time_base, True)
                )
                index += 1
            await asyncio.sleep(0.01)

    def request_keyframe(self) -> None:
        pass

    async def live(self) -> None:
        async with asyncio.timeout(10):
            while self.registry.get(self.stream.name) is None:
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.registry.release(self.stream)


@contextlib.asynccontextmanager
async def clip_source(registry: StreamRegistry, name: str, units: AccessUnits) -> AsyncIterator[ClipSource]:
    source = ClipSource(registry, name, units)
    try:
        await source.live()
        yield source
    finally:
        await source.stop()


class CapturingRegistry(StreamRegistry):
    """The far end's registry: every stream its ingest claims is subscribed at once, so the
    test sees every frame the ingest pushed, from the first."""

    def __init__(self) -> None:
        super().__init__()
        self.captures: list[Subscription] = []

    def claim(self, name: str, *, resume: bool = False, on_demand: bool = False) -> Stream:
        stream = super().claim(name, resume=resume, on_demand=on_demand)
        self.captures.append(stream.subscribe(Quiet(), max_frames=10_000))
        return stream

    async def capture(self, index: int, timeout: float = 20.0) -> Subscription:
        async with asyncio.timeout(timeout):
            while len(self.captures) <= index:
                await asyncio.sleep(0.02)
        return self.captures[index]


class DroppableIngest(RtmpIngestServer):
    """The gateway's RTMP ingest, whose `stop` also drops the connections it serves (a
    restarting server: asyncio's `Server.close` leaves accepted connections open)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writers: set[asyncio.StreamWriter] = set()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await super()._connection(reader, writer)
        finally:
            self.writers.discard(writer)

    async def stop(self) -> None:
        await super().stop()
        for writer in list(self.writers):
            writer.transport.abort()


async def frames(subscription: Subscription, count: int, timeout: float = 20.0) -> list[MediaFrame]:
    out: list[MediaFrame] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            frame = await subscription.video.get()
            assert frame is not None, "the stream ended"
            out.append(frame)
    return out


async def until(condition: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def nal_units(data: bytes) -> tuple[bytes, ...]:
    return tuple(h264.iter_nal_units(data))


def check_relayed(received: list[MediaFrame], units: AccessUnits) -> None:
    """From the first keyframe at pts 0, every frame is one of the clip's access units, NAL
    unit for NAL unit (no transcoding; only start codes may change length), with timestamps
    that never go back."""
    originals = {nal_units(data) for data, _ in units}
    assert received[0].keyframe and received[0].pts == 0
    assert all(frame.codec == "H264" and nal_units(frame.data) in originals for frame in received)
    assert sum(frame.keyframe for frame in received) >= 2  # a keyframe every 30 frames
    assert all(a.pts <= b.pts for a, b in zip(received, received[1:], strict=False))
    assert received[-1].pts > 0


@contextlib.asynccontextmanager
async def ingest(registry: StreamRegistry, keys: IngestKeys, port: int) -> AsyncIterator[DroppableIngest]:
    server = DroppableIngest(registry, keys, host="127.0.0.1", port=port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class ToOurIngest(NamedTuple):
    far: CapturingRegistry  # our own RTMP ingest's registry: the far end
    source: ClipSource  # the clip as the stream "cam"
    republish: RtmpRepublish  # of "cam" to the far end as "copy", not started
    key: str


@contextlib.asynccontextmanager
async def to_our_ingest(clip_units: AccessUnits) -> AsyncIterator[ToOurIngest]:
    """A republish of the clip to our own RTMP ingest; stopped on exit."""
    far, far_keys, port = CapturingRegistry(), IngestKeys(), free_port()
    key = far_keys.issue("copy")
    near = StreamRegistry()
    async with ingest(far, far_keys, port), clip_source(near, "cam", clip_units) as source:
        republish = RtmpRepublish(near, "cam", f"rtmp://127.0.0.1:{port}/live/{key.key}", reconnect=FAST)
        try:
            yield ToOurIngest(far, source, republish, key.key)
        finally:
            await republish.stop()


async def test_republish_to_our_own_ingest(clip_units: AccessUnits) -> None:
    async with to_our_ingest(clip_units) as (far, source, republish, key):
        await republish.start()
        received = await frames(await far.capture(0), 70)
        check_relayed(received, clip_units)
        copy = far.get("copy")
        assert copy is not None and (copy.width, copy.height) == (320, 240)
        assert republish.status is RepublishStatus.PUBLISHING
        assert republish.connections == 1 and republish.frames >= 70
        assert key not in str(republish.describe())
        # The source stops: so does the republish, and the far end's stream ends.
        await source.stop()
        async with asyncio.timeout(10):
            await republish.done.wait()
        assert republish.status is RepublishStatus.STOPPED
        await until(lambda: far.find("copy") is None, 10)


@contextlib.asynccontextmanager
async def ffmpeg_rtmp_server(port: int, out: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """ffmpeg listening as an RTMP server at ``rtmp://127.0.0.1:{port}/live/x``, copying what
    is published into the MP4 ``out``. The body ends the publish; ffmpeg must then finish
    the file and exit cleanly. Killed if it does not."""
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-listen", "1"]
    cmd += ["-i", f"rtmp://127.0.0.1:{port}/live/x", "-c", "copy", "-f", "mp4", str(out)]
    ffmpeg = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield ffmpeg
        _, err = await asyncio.wait_for(asyncio.to_thread(ffmpeg.communicate), 30)
        assert ffmpeg.returncode == 0, err.decode(errors="replace")
    finally:
        if ffmpeg.poll() is None:
            ffmpeg.kill()
            ffmpeg.wait(timeout=5)


def probe_streams(path: Path) -> list[dict[str, Any]]:
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return json.loads(probe.stdout)["streams"]


def check_decodes(path: Path) -> None:
    """Every stream of ``path`` decodes without a single error."""
    decode = subprocess.run(
        ["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        timeout=60,
    )
    assert decode.returncode == 0 and not decode.stderr, decode.stderr.decode(errors="replace")


async def test_republish_to_ffmpeg_as_an_rtmp_server(clip_units: AccessUnits, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "out.mp4"
    near = StreamRegistry()
    async with ffmpeg_rtmp_server(port, out), clip_source(near, "cam", clip_units):
        # ffmpeg may not listen yet: the republish retries until it does.
        republish = RtmpRepublish(near, "cam", f"rtmp://127.0.0.1:{port}/live/x", reconnect=FAST)
        await republish.start()
        try:
            await until(lambda: republish.frames >= 90, 30)
            assert republish.connections == 1
        finally:
            await republish.stop()  # FCUnpublish, deleteStream, close: ffmpeg finishes the file
        assert republish.audio_frames == 0
    (stream,) = probe_streams(out)  # video only: no audio track
    assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", 320, 240)
    assert int(stream["nb_read_frames"]) >= 60
    check_decodes(out)


async def test_republish_carries_opus_audio_as_aac(
    servers: Callable[..., Any], clip: Path, tmp_path: Path
) -> None:
    """ffmpeg publishes the clip and a 440 Hz Opus tone over RTSP (their RTP clocks start
    anywhere); the republish to ffmpeg as an RTMP server carries H.264 as it is and the tone
    as AAC, in step with the video."""
    rtsp = await servers()
    port, out = free_port(), tmp_path / "out.mp4"
    async with ffmpeg_push(f"rtsp://127.0.0.1:{rtsp.port}/pushed", clip, "tcp", ("-c:a", "libopus")):
        await until(lambda: rtsp.registry.get("pushed") is not None)
        stream = rtsp.registry.get("pushed")
        assert stream is not None and stream.audio_codec is not None and stream.audio_codec.name == "opus"
        async with ffmpeg_rtmp_server(port, out):
            republish = RtmpRepublish(
                rtsp.registry, "pushed", f"rtmp://127.0.0.1:{port}/live/x", reconnect=FAST
            )
            await republish.start()
            try:
                # 3 s of each: 90 frames of video, 140 AAC frames of 1024 samples at 48 kHz.
                await until(lambda: republish.frames >= 90 and republish.audio_frames >= 140, 30)
                assert republish.connections == 1 and republish.audio_failures == 0
            finally:
                await republish.stop()
    video, audio = sorted(probe_streams(out), key=lambda stream: stream["codec_type"] != "video")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert int(video["nb_read_frames"]) >= 60
    assert (audio["codec_name"], audio["profile"], audio["sample_rate"], audio["channels"]) == (
        "aac",
        "LC",
        "48000",
        2,
    )
    assert int(audio["nb_read_frames"]) >= 100
    # One timeline: the audio starts with the live video, which the first frames sent (a
    # replayed GOP of at most half a second) may precede, never follow.
    assert -0.1 <= float(audio["start_time"]) - float(video["start_time"]) <= 0.6
    check_decodes(out)
    with av.open(str(out)) as container:
        samples = np.concatenate(
            [frame.to_ndarray()[0] for frame in container.decode(audio=0)]
        )  # the first channel, float planar at 48 kHz
    steady = samples[48000 // 2 :]  # past the encoders' start
    assert len(steady) >= 48000
    assert abs(dominant_frequency(steady, 48000) - 440) < 5
    assert np.abs(steady).max() > 0.05  # a tone, not silence


def g711_tone(codec: str, seconds: int = 4) -> list[bytes]:
    """20 ms frames (160 bytes at 8 kHz) of a 440 Hz tone, ``codec`` "mulaw" or "alaw"."""
    made = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000"]
        + ["-t", str(seconds), "-ac", "1", "-f", codec, "-"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return [made.stdout[i : i + 160] for i in range(0, len(made.stdout) - 159, 160)]


async def test_audio_that_comes_late_reaches_our_own_ingest(clip_units: AccessUnits) -> None:
    """A stream that had no audio when the publish started gets PCMU: the republish
    announces it and sends it as AAC, which our ingest takes (and makes Opus of)."""
    async with to_our_ingest(clip_units) as (far, source, republish, _):
        await republish.start()
        capture = await far.capture(0)
        await frames(capture, 15)
        copy = far.get("copy")
        assert copy is not None and copy.audio_codec is None
        source.add_audio(Codec("PCMU", 8000), g711_tone("mulaw"), 160, origin=3_000_000)
        opus: list[MediaFrame] = []
        async with asyncio.timeout(20):
            while len(opus) < 100:  # 2 s
                frame = await capture.audio.get()
                assert frame is not None, "the stream ended"
                opus.append(frame)
        assert copy.audio_codec is not None and copy.audio_codec.name == "opus"
        assert republish.connections == 1 and republish.audio_failures == 0
    assert all(frame.codec == "opus" for frame in opus)
    assert all(a.pts < b.pts for a, b in zip(opus, opus[1:], strict=False))
    decoder = av.CodecContext.create("opus", "r")
    decoded = [frame for packet in opus for frame in decoder.decode(av.Packet(packet.data))]
    samples = np.concatenate([frame.to_ndarray()[0] for frame in decoded])
    steady = samples[48000 // 2 :]
    assert abs(dominant_frequency(steady, 48000) - 440) < 5
    assert np.abs(steady).max() > 0.05


async def test_audio_the_transcoder_fails_on_never_stops_the_video(clip_units: AccessUnits) -> None:
    """Opus frames no decoder takes: one log event for the run of failures, no audio sent,
    and the video as ever."""
    with structlog.testing.capture_logs() as logs:
        async with to_our_ingest(clip_units) as (far, source, republish, _):
            source.add_audio(Codec("opus", 48000), [b"\xff\xff\xff garbage"], 960, origin=0)
            await republish.start()
            capture = await far.capture(0)
            check_relayed(await frames(capture, 40), clip_units)
            await until(lambda: republish.audio_failures >= 10)
            assert republish.connections == 1 and republish.audio_frames == 0
            assert len(capture.audio) == 0
    (failed,) = [entry for entry in logs if entry["event"] == "rtmp_republish_audio_failed"]
    assert (failed["stream"], failed["codec"], failed["failures"]) == ("cam", "opus", 1)
    assert "undecodable" in failed["error"]


async def test_republish_reconnects_when_the_far_end_restarts(clip_units: AccessUnits) -> None:
    far, far_keys, port = CapturingRegistry(), IngestKeys(), free_port()
    key = far_keys.issue("copy")
    near = StreamRegistry()
    async with clip_source(near, "cam", clip_units):
        republish = RtmpRepublish(near, "cam", f"rtmp://127.0.0.1:{port}/live/{key.key}", reconnect=FAST)
        try:
            async with ingest(far, far_keys, port):
                await republish.start()
                check_relayed(await frames(await far.capture(0), 40), clip_units)
            # The far end is gone (listener closed, connections dropped).
            await until(lambda: republish.status is RepublishStatus.RECONNECTING)
            assert republish.last_error
            await until(lambda: far.find("copy") is None)
            async with ingest(far, far_keys, port):
                # Back: the same URL publishes again, from a keyframe at timestamp 0.
                check_relayed(await frames(await far.capture(1), 40), clip_units)
                assert republish.status is RepublishStatus.PUBLISHING
                assert republish.connections == 2
        finally:
            await republish.stop()
    assert republish.status is RepublishStatus.STOPPED


async def test_a_far_end_that_stops_reading_never_blocks_the_stream(clip_units: AccessUnits) -> None:
    """The far end accepts the publish, then reads nothing: the republish skips frames to
    the next keyframe, then drops the connection and retries; another subscriber of the
    same stream gets every frame meanwhile."""
    stalled = asyncio.Event()
    release = asyncio.Event()

    async def stalling_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rtmp = RtmpServerConnection()
        try:
            while rtmp.publishing is None:
                data = await reader.read(65536)
                if not data:
                    return
                for event in rtmp.receive_data(data):
                    if isinstance(event, PublishRequested):
                        rtmp.accept_publish(event)
                writer.write(rtmp.data_to_send())
            stalled.set()
            await release.wait()  # and never read again
        finally:
            writer.transport.abort()

    # A small receive buffer (inherited by accepted sockets) fills in seconds, not minutes.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(stalling_server, sock=listener)
    port = listener.getsockname()[1]
    near = StreamRegistry()
    stream = near.claim("cam")
    stream.set_codecs(H264, None)
    stream.attach_source(Quiet(), "test")
    other = stream.subscribe(Quiet(), max_frames=100_000)
    republish = RtmpRepublish(near, "cam", f"rtmp://127.0.0.1:{port}/live/x", reconnect=FAST, timeout=1.0)
    pushed = 0

    def push() -> None:
        nonlocal pushed
        data, keyframe = clip_units[pushed % len(clip_units)]
        stream.push(MediaFrame("video", "H264", data, pushed * 3000, Fraction(1, 90000), keyframe))
        pushed += 1

    try:
        push()
        await republish.start()
        async with asyncio.timeout(10):
            await stalled.wait()
        await until(lambda: republish.status is RepublishStatus.PUBLISHING, 10)
        assert republish.connections == 1
        # Frames as fast as the loop goes (a busy stream): the stalled far end falls behind.
        async with asyncio.timeout(60):
            while republish.status is RepublishStatus.PUBLISHING:
                push()
                await asyncio.sleep(0.002)
        assert republish.status is RepublishStatus.RECONNECTING
        assert republish.last_error is not None and "took nothing" in republish.last_error
        assert republish.dropped > 0
        assert len(other.video) == pushed and other.video.dropped == 0  # never held back
    finally:
        release.set()
        await republish.stop()
        server.close()
        await server.wait_closed()
        near.release(stream)


async def test_refusals_are_retried_then_fail(clip_units: AccessUnits) -> None:
    """Our ingest refuses an unknown key (NetStream.Publish.BadName): the republish says why
    and, after a few refusals in a row, gives up."""
    far, port = CapturingRegistry(), free_port()
    near = StreamRegistry()
    async with ingest(far, IngestKeys(), port), clip_source(near, "cam", clip_units):
        republish = RtmpRepublish(near, "cam", f"rtmp://127.0.0.1:{port}/live/nokey", reconnect=(0.05, 0.1))
        republish.max_refusals = 2
        await republish.start()
        try:
            async with asyncio.timeout(20):
                await republish.done.wait()
            assert republish.status is RepublishStatus.FAILED
            assert republish.last_error is not None and "NetStream.Publish.BadName" in republish.last_error
            assert republish.connections == 0 and len(far) == 0
        finally:
            await republish.stop()
        assert republish.status is RepublishStatus.FAILED


# --- the REST API -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def rest_app(gateway: Gateway, republishes: RtmpRepublishes) -> AsyncIterator[str]:
    """The WCS REST API with republishing, on its own port (whatever app.py wires)."""
    api = WcsRestApi(gateway.registry, gateway.wcs, gateway.rtsp_pulls, republishes=republishes)
    app = web.Application()
    app.add_routes(api.routes())
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/rest-api"
    finally:
        await runner.cleanup()


async def call(http: aiohttp.ClientSession, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json()


async def test_rest_push_calls(local_gateway: Gateway, clip_units: AccessUnits) -> None:
    gateway = local_gateway
    republishes = RtmpRepublishes(gateway.registry, reconnect=FAST)
    key = gateway.ingest_keys.issue("copy")
    rtmp_url = f"rtmp://127.0.0.1:{gateway.config.rtmp_port}/live/{key.key}"
    async with (
        clip_source(gateway.registry, "cam", clip_units),
        rest_app(gateway, republishes) as api,
        aiohttp.ClientSession() as http,
    ):
        try:
            for bad in [
                {"streamName": "cam", "rtmpUrl": "http://127.0.0.1/live/x"},
                {"streamName": "cam", "rtmpUrl": "rtmp://127.0.0.1"},
                {"streamName": "cam"},
                {"rtmpUrl": rtmp_url},
                {"streamName": 5, "rtmpUrl": rtmp_url},
            ]:
                status, answer = await call(http, f"{api}/push/startup", bad)
                assert status == 400 and answer["error"], (bad, answer)
            status, answer = await call(
                http, f"{api}/push/startup", {"streamName": "nobody", "rtmpUrl": rtmp_url}
            )
            assert status == 404 and "nobody" in answer["error"]

            status, entry = await call(
                http, f"{api}/push/startup", {"streamName": "cam", "rtmpUrl": rtmp_url}
            )
            assert status == 200
            assert entry["streamName"] == "cam" and entry["mediaSessionId"]
            assert key.key not in json.dumps(entry)  # the stream key is a secret
            assert entry["rtmpUrl"] == f"rtmp://127.0.0.1:{gateway.config.rtmp_port}/live/***"
            assert entry["status"] in ("CONNECTING", "PUBLISHING")
            msid = entry["mediaSessionId"]
            # The republish arrives at the gateway's own ingest as stream "copy".
            await until(lambda: gateway.registry.get("copy") is not None)

            async with http.get(f"{api}/push/find_all") as response:
                assert response.status == 200
                (listed,) = await response.json()
            assert listed["mediaSessionId"] == msid and listed["status"] == "PUBLISHING"
            for query in ({"streamName": "cam"}, {"rtmpUrl": rtmp_url}, {"mediaSessionId": msid}):
                status, found = await call(http, f"{api}/push/find", query)
                assert status == 200 and [item["mediaSessionId"] for item in found] == [msid]
            status, _ = await call(http, f"{api}/push/find", {"streamName": "other"})
            assert status == 404

            status, answer = await call(http, f"{api}/push/terminate", {"mediaSessionId": msid})
            assert (status, answer) == (200, {"mediaSessionId": msid, "status": "terminated"})
            await until(lambda: gateway.registry.find("copy") is None)
            async with http.get(f"{api}/push/find_all") as response:
                assert await response.json() == []
            status, _ = await call(http, f"{api}/push/terminate", {"mediaSessionId": msid})
            assert status == 404
            status, _ = await call(http, f"{api}/push/terminate", {})
            assert status == 400
        finally:
            await republishes.stop_all()


async def test_the_gateway_serves_push_calls(local_gateway: Gateway) -> None:
    """app.py always passes its RtmpRepublishes to WcsRestApi: the gateway's own HTTP port
    answers push/find_all."""
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{local_gateway.config.http_port}/rest-api/push/find_all"
        status, answer = await call(http, url)
    assert (status, answer) == (200, [])
