"""RTSP out with audio, on loopback: real ffmpeg publishes video with Opus or PCMU audio
(ANNOUNCE/RECORD), and `RtspServer` serves both tracks to ffprobe and ffmpeg over TCP and
UDP, and to a raw player that sets the tracks up one by one, with mistakes on the way."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from gateway.app import Gateway
from gateway.media import h264
from gateway.media.registry import StreamRegistry
from gateway.media.rtsp.message import InterleavedFrame, Request, Response, RtspParser, encode_interleaved
from gateway.media.rtsp.rtp import parse_rtp, rtp_header
from gateway.media.rtsp.sdp import parse_sdp
from gateway.media.sources.rtsp import RtspPull
from gateway.wcs.client import WcsClient
from tests.conftest import dominant_frequency
from tests.integration.conftest import AccessUnits
from tests.integration.test_rtsp import NAME, Watcher, exchange, ffprobe, request, run_tool, until
from tests.integration.test_rtsp_push import ffmpeg_push

OPUS = ("-c:a", "libopus")
PCMU = ("-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1")


async def pushed(server: Any) -> Any:
    """The stream ``ffmpeg_push`` publishes, once playable, with its audio."""
    await until(lambda: server.registry.get("pushed") is not None)
    stream = server.registry.get("pushed")
    assert stream is not None and stream.audio_codec is not None
    return stream


async def decode(url: str, transport: str, seconds: float = 2, timeout: float = 60) -> dict[int, list[int]]:
    """ffmpeg reads ``url`` for ``seconds`` of stream time, decoding every stream: the pts of
    each decoded frame, by stream index (one framecrc line per frame)."""
    code, out, err = await run_tool(
        *("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-rtsp_transport", transport),
        *("-timeout", "10000000", "-i", url, "-map", "0", "-t", str(seconds)),
        *("-c:v", "rawvideo", "-c:a", "pcm_s16le", "-f", "framecrc", "-"),
        timeout=timeout,
    )
    assert code == 0, err
    frames: dict[int, list[int]] = {}
    for line in out.decode().splitlines():
        if line.startswith("#"):
            continue
        index, pts = (int(field) for field in line.split(",")[:2])
        frames.setdefault(index, []).append(pts)
    return frames


@pytest.mark.parametrize(
    ("audio", "codec_name", "transport"),
    [
        (OPUS, "opus", "tcp"),
        (OPUS, "opus", "udp"),
        (PCMU, "pcm_mulaw", "tcp"),
        (PCMU, "pcm_mulaw", "udp"),
    ],
)
async def test_ffprobe_reads_video_and_audio(
    servers: Callable[..., Any], clip: Path, audio: tuple[str, ...], codec_name: str, transport: str
) -> None:
    server = await servers()
    url = f"rtsp://127.0.0.1:{server.port}/pushed"
    async with ffmpeg_push(url, clip, "tcp", audio):
        await pushed(server)
        code, probe, err = await ffprobe(url, transport=transport)
        assert code == 0, err
        assert probe["streams"] == [
            {"codec_name": "h264", "width": 320, "height": 240},
            {"codec_name": codec_name},
        ]
        await until(lambda: not server.viewers)  # ffprobe tore down
    # A stream without audio still has one track.
    code, probe, err = await ffprobe(f"rtsp://127.0.0.1:{server.port}/{NAME}", transport=transport)
    assert code == 0, err
    assert probe["streams"] == [{"codec_name": "h264", "width": 320, "height": 240}]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_ffmpeg_decodes_the_audio(servers: Callable[..., Any], clip: Path, transport: str) -> None:
    server = await servers()
    url = f"rtsp://127.0.0.1:{server.port}/pushed"
    async with ffmpeg_push(url, clip, "tcp", OPUS):
        await pushed(server)
        frames = await decode(url, transport)
    assert sorted(frames) == [0, 1]
    video, audio = frames[0], frames[1]
    # Two seconds of 20 ms Opus frames (some lost at the start is fine), in order.
    assert len(video) > 10 and len(audio) > 10
    assert audio == sorted(audio) and len(set(audio)) == len(audio)


def setup(uri: str, cseq: int, transport: str, *headers: tuple[str, str]) -> bytes:
    return Request("SETUP", uri, (("CSeq", str(cseq)), ("Transport", transport), *headers)).encode()


async def read_until_answer(
    reader: asyncio.StreamReader, parser: RtspParser, frames: list[InterleavedFrame], timeout: float = 10
) -> Response:
    """The next answer on the connection; interleaved data before it goes to ``frames``."""
    answer: Response | None = None
    async with asyncio.timeout(timeout):
        while answer is None:
            data = await reader.read(65536)
            assert data, "the server closed the connection"
            for message in parser.receive_data(data):
                if isinstance(message, InterleavedFrame):
                    frames.append(message)  # those after the answer too
                else:
                    assert isinstance(message, Response) and answer is None
                    answer = message
    return answer


async def test_a_player_setting_up_tracks_one_by_one_with_mistakes(
    servers: Callable[..., Any], clip: Path
) -> None:
    server = await servers()
    port = server.port
    url = f"rtsp://127.0.0.1:{port}/pushed"
    # A stream without audio has no track 1.
    camera = f"rtsp://127.0.0.1:{port}/{NAME}"
    responses, closed = await exchange(port, request("DESCRIBE", camera), then=request("OPTIONS", "*", 2))
    assert [r.status for r in responses] == [200, 200] and not closed
    assert [m.kind for m in parse_sdp(responses[0].body.decode()).media] == ["video"]
    responses, closed = await exchange(
        port,
        setup(camera + "/trackID=1", 1, "RTP/AVP/TCP;unicast;interleaved=2-3"),
        then=request("OPTIONS", "*", 2),
    )
    assert [r.status for r in responses] == [404, 200] and not closed

    async with ffmpeg_push(url, clip, "tcp", OPUS):
        stream = await pushed(server)
        # Another player (the gateway's own RTSP client) keeps going throughout.
        pull = RtspPull(StreamRegistry(), "copy", url, timeout=5.0)
        await pull.start()
        watcher: Watcher | None = None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await until(lambda: pull.connected and pull.stream is not None)
            assert pull.stream is not None
            watcher = Watcher(pull.stream)
            await watcher.wait(frames=10)

            parser = RtspParser()
            frames: list[InterleavedFrame] = []
            writer.write(request("DESCRIBE", url, 1))
            described = await read_until_answer(reader, parser, frames)
            sdp = parse_sdp(described.body.decode())
            assert [(m.kind, m.formats, m.control) for m in sdp.media] == [
                ("video", (96,), "trackID=0"),
                ("audio", (97,), "trackID=1"),
            ]
            assert sdp.media[1].rtpmap == {97: ("opus", 48000)}
            base = described.header("Content-Base")
            assert base == url + "/"
            session: tuple[tuple[str, str], ...] = ()
            for cseq, (track, transport, status) in enumerate(
                [
                    (2, "RTP/AVP/TCP;unicast;interleaved=0-1", 404),  # no such track
                    (0, "RTP/AVP/TCP;unicast;interleaved=0-1", 200),
                    (0, "RTP/AVP/TCP;unicast;interleaved=4-5", 455),  # the same track again
                    (1, "RTP/AVP/TCP;unicast;interleaved=0-1", 461),  # the video's channels
                    (1, "RTP/AVP/TCP;unicast;interleaved=2-3", 200),
                ],
                2,
            ):
                writer.write(setup(f"{base}trackID={track}", cseq, transport, *session))
                answer = await read_until_answer(reader, parser, frames)
                assert (answer.status, answer.cseq) == (status, cseq), transport
                if status == 200:
                    session = (("Session", (answer.header("Session") or "").split(";")[0]),)
            writer.write(Request("PLAY", base, (("CSeq", "7"), *session)).encode())
            played = await read_until_answer(reader, parser, frames)
            assert played.status == 200
            info = [
                dict(part.split("=", 1) for part in track.split(";"))
                for track in (played.header("RTP-Info") or "").split(",")
            ]
            assert [track["url"] for track in info] == [base + "trackID=0", base + "trackID=1"]

            # RTP of both tracks on their channels: the audio one frame a packet, unmarked,
            # starting where RTP-Info says, its own SSRC.
            async with asyncio.timeout(20):
                while sum(frame.channel == 2 for frame in frames) < 20 or not any(
                    f.channel == 0 for f in frames
                ):
                    data = await reader.read(65536)
                    assert data
                    frames += [m for m in parser.receive_data(data) if isinstance(m, InterleavedFrame)]
            assert {frame.channel for frame in frames} == {0, 2}
            video = [parse_rtp(frame.payload) for frame in frames if frame.channel == 0]
            audio = [parse_rtp(frame.payload) for frame in frames if frame.channel == 2]
            assert {p.payload_type for p in video} == {96} and {p.payload_type for p in audio} == {97}
            assert not any(p.marker for p in audio) and all(p.payload for p in audio)
            assert len({p.ssrc for p in audio}) == 1 and audio[0].ssrc != video[0].ssrc
            assert (audio[0].sequence, audio[0].timestamp) == (int(info[1]["seq"]), int(info[1]["rtptime"]))
            assert [p.sequence for p in audio] == [
                (audio[0].sequence + i) & 0xFFFF for i in range(len(audio))
            ]
            steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(audio, audio[1:], strict=False)}
            assert steps == {960}  # ffmpeg's 20 ms Opus frames at 48 kHz
            # The video's rtptime is the live frame's at PLAY (a young GOP's frames before it
            # come first): the instant the audio's first frame stands for too.
            assert video[0].sequence == int(info[0]["seq"])
            assert int(info[0]["rtptime"]) in {p.timestamp for p in video}
            frames_before = watcher.frames
            await watcher.wait(frames=frames_before + 10)
            assert pull.connected and pull.connections == 1
            assert stream.audio_codec is not None and stream.audio_codec.name == "opus"
        finally:
            writer.close()
            if watcher is not None:
                await watcher.stop()
            await pull.stop()


@pytest.mark.parametrize(("audio", "relayed", "rate"), [(OPUS, "opus", 48000), (PCMU, "PCMU", 8000)])
async def test_a_pulled_stream_carries_its_audio_to_webrtc_players(
    local_gateway: Gateway, clip: Path, audio: tuple[str, ...], relayed: str, rate: int
) -> None:
    """ffmpeg publishes video and audio to the gateway's RTSP port; a WebSocket play of that
    rtsp:// URL pulls it (TCP) with both tracks, and two WebRTC players decode the tone."""
    url = f"rtsp://127.0.0.1:{local_gateway.config.rtsp_port}/pushed"
    async with ffmpeg_push(url, clip, "tcp", audio):
        await until(lambda: local_gateway.registry.get("pushed") is not None)
        clients = [
            await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}") for _ in range(2)
        ]
        try:
            for client in clients:
                player = await client.play(url, timeout=30)
                await player.wait_status("PLAYING", timeout=30)
                await player.wait_for(lambda p=player: any(t.kind == "audio" for t in p.tracks))
                track = next(t for t in player.tracks if t.kind == "audio")
                async with asyncio.timeout(20):
                    decoded = [await track.recv() for _ in range(50)]
                samples = decoded[-10:]
                assert max(abs(int(v)) for frame in samples for v in frame.to_ndarray().ravel()) > 1000
            pulled = local_gateway.registry.get(url)
            assert pulled is not None and pulled.ingest == "rtsp"
            assert pulled.audio_codec is not None and (
                pulled.audio_codec.name,
                pulled.audio_codec.clock_rate,
            ) == (
                relayed,
                rate,
            )
            assert len(pulled.subscriptions) == 2
        finally:
            for client in clients:
                await client.close()


def aac_tone(seconds: float = 2.0) -> tuple[bytes, list[bytes]]:
    """A 440 Hz tone encoded to AAC-LC, 48 kHz mono: its AudioSpecificConfig and raw frames
    (1024 samples each)."""
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "mono", "fltp"
    encoder.bit_rate = 64000
    encoder.open()
    frames: list[bytes] = []
    for index in range(int(seconds * 48000 / 1024)):
        t = (numpy.arange(1024) + index * 1024) / 48000
        frame = av.AudioFrame.from_ndarray(
            (0.5 * numpy.sin(2 * numpy.pi * 440 * t)).astype("float32").reshape(1, -1),
            format="fltp",
            layout="mono",
        )
        frame.sample_rate, frame.pts = 48000, index * 1024
        frames += [bytes(packet) for packet in encoder.encode(frame)]
    return bytes(encoder.extradata or b""), frames


@contextlib.asynccontextmanager
async def aac_camera(units: AccessUnits) -> AsyncIterator[str]:
    """A camera serving H.264 and AAC-hbr over RTSP, TCP-interleaved, as IP cameras do (the
    gateway's own server serves AAC pushes as Opus): scripted on the sans-I/O codec."""
    config, aac = aac_tone()
    sps, pps = (nal for nal in h264.iter_nal_units(units[0][0]) if nal[0] & 0x1F in (7, 8))
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\n"
        "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;"
        f"sprop-parameter-sets={base64.b64encode(sps).decode()},{base64.b64encode(pps).decode()}\r\n"
        "a=control:trackID=0\r\n"
        "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\n"
        "a=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
        f"indexdeltalength=3;config={config.hex()}\r\na=control:trackID=1\r\n"
    )
    senders: list[asyncio.Task[None]] = []

    async def send_media(writer: asyncio.StreamWriter) -> None:
        packetizer = get_encoder(
            RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=96)
        )
        video_seq = audio_seq = audio_sent = 0
        for index in itertools.count():
            data, key = units[index % len(units)]
            packet = av.Packet(data)
            packet.pts, packet.time_base = index * 3000, Fraction(1, 90000)
            payloads, timestamp = packetizer.pack(packet)
            for n, payload in enumerate(payloads):
                header = rtp_header(
                    payload_type=96,
                    marker=n == len(payloads) - 1,
                    sequence=video_seq,
                    timestamp=timestamp,
                    ssrc=1,
                )
                writer.write(encode_interleaved(0, header + payload))
                video_seq += 1
            while audio_sent * 1024 / 48000 <= index / 30:
                frame = aac[audio_sent % len(aac)]
                au = (16).to_bytes(2, "big") + (len(frame) << 3).to_bytes(2, "big") + frame
                header = rtp_header(
                    payload_type=97, marker=True, sequence=audio_seq, timestamp=audio_sent * 1024, ssrc=2
                )
                writer.write(encode_interleaved(2, header + au))
                audio_seq, audio_sent = audio_seq + 1, audio_sent + 1
            await writer.drain()
            await asyncio.sleep(1 / 30)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RtspParser()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for message in parser.receive_data(data):
                    if not isinstance(message, Request):
                        continue
                    headers: list[tuple[str, str]] = [("CSeq", str(message.cseq)), ("Session", "AAC1")]
                    body = b""
                    if message.method == "OPTIONS":
                        headers.append(("Public", "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN"))
                    elif message.method == "DESCRIBE":
                        headers += [("Content-Base", f"{url}/"), ("Content-Type", "application/sdp")]
                        body = sdp.encode()
                    elif message.method == "SETUP":
                        headers.append(("Transport", message.header("Transport") or ""))
                    elif message.method == "PLAY":
                        senders.append(asyncio.create_task(send_media(writer)))
                    writer.write(Response(200, headers=tuple(headers), body=body).encode())
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    url = f"rtsp://127.0.0.1:{server.sockets[0].getsockname()[1]}/cam"
    try:
        yield url
    finally:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        server.close()


async def test_a_pulled_cameras_aac_becomes_opus_once_for_every_viewer(clip_units: AccessUnits) -> None:
    registry = StreamRegistry()
    async with aac_camera(clip_units) as url:
        pull = RtspPull(registry, "aac-cam", url, timeout=5.0)
        await pull.start()
        try:
            await until(lambda: pull.connected and registry.get("aac-cam") is not None)
            stream = registry.get("aac-cam")
            assert stream is not None and stream.audio_codec is not None and stream.audio_codec.name == "opus"
            assert pull.audio_feed is not None and pull.audio_feed.transcoder is not None
            watchers = [Watcher(stream), Watcher(stream)]
            try:
                decoder = av.CodecContext.create("opus", "r")
                samples = []
                async with asyncio.timeout(20):
                    while len(samples) < 60:
                        frame = await watchers[0].subscription.audio.get()
                        assert frame is not None and frame.codec == "opus"
                        samples += [d.to_ndarray()[0] for d in decoder.decode(av.Packet(frame.data))]
                    for _ in range(10):  # the second viewer gets the same Opus frames
                        assert (await watchers[1].subscription.audio.get()) is not None
                await watchers[0].wait(frames=10)
            finally:
                for watcher in watchers:
                    await watcher.stop()
            tone = numpy.concatenate(samples[20:])
            assert abs(dominant_frequency(tone, 48000) - 440) < 10
            assert pull.audio_feed.transcoder is not None  # one, made at PLAY, for the stream
        finally:
            await pull.stop()
