"""RTSP over UDP and RTSP push in, on loopback: `RtspServer` serving a clip-fed stream to
``ffprobe -rtsp_transport udp`` and to `RtspPull(transport="udp")`, a UDP player that
vanishes, real ffmpeg publishing (ANNOUNCE/RECORD) over TCP and UDP with and without audio,
publishes refused (name in use, the authorization hook) and bad publishing input that must
not disturb another reader."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.media.registry import StreamRegistry
from gateway.media.rtsp.client import Playing, RtspClientConnection
from gateway.media.rtsp.message import Request
from gateway.media.sources.rtsp import RtspPull
from gateway.media.sources.rtsp_push import RtspPush
from tests.integration.conftest import ClipCamera
from tests.integration.test_rtsp import NAME, Watcher, exchange, ffprobe, request, until

H264_SDP = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=push\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n"
    "a=control:streamid=0\r\n"
)


def announce(url: str, body: str | bytes, cseq: int = 1, content_type: str = "application/sdp") -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return Request("ANNOUNCE", url, (("CSeq", str(cseq)), ("Content-Type", content_type)), data).encode()


@contextlib.asynccontextmanager
async def ffmpeg_push(
    url: str, clip: Path, transport: str, audio: tuple[str, ...] = ()
) -> AsyncIterator[asyncio.subprocess.Process]:
    """ffmpeg publishing ``clip`` in a loop, in real time, without transcoding the video;
    ``audio`` is an encoder's options for a sine tone mixed in. Stopped on exit."""
    inputs = ["-re", "-stream_loop", "-1", "-i", str(clip)]
    maps = ["-map", "0:v"]
    if audio:
        inputs += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
        maps += ["-map", "1:a", *audio]
    proc = await asyncio.create_subprocess_exec(
        *("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", *inputs, *maps),
        *("-c:v", "copy", "-f", "rtsp", "-rtsp_transport", transport, url),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def refused(proc: asyncio.subprocess.Process, timeout: float = 20.0) -> str:
    """ffmpeg's error output once it gave up."""
    assert proc.stderr is not None
    err = await asyncio.wait_for(proc.stderr.read(), timeout)
    await asyncio.wait_for(proc.wait(), timeout)
    assert proc.returncode != 0
    return err.decode(errors="replace")


# --- playing over UDP ----------------------------------------------------------------------------


async def test_ffprobe_reads_a_served_stream_over_udp(servers: Callable[..., Any]) -> None:
    server = await servers()
    assert server.udp_ports is not None and server.udp_ports[0] % 2 == 0
    code, probe, err = await ffprobe(f"rtsp://127.0.0.1:{server.port}/{NAME}", transport="udp")
    assert code == 0, err
    assert probe["streams"] == [{"codec_name": "h264", "width": 320, "height": 240}]
    await until(lambda: not server.viewers)  # ffprobe tore down


async def test_pull_over_udp(servers: Callable[..., Any]) -> None:
    server = await servers()
    pulled = StreamRegistry()
    pull = RtspPull(pulled, "copy", f"rtsp://127.0.0.1:{server.port}/{NAME}", timeout=5.0, transport="udp")
    await pull.start()
    watcher: Watcher | None = None
    try:
        await until(lambda: pull.connected)
        assert pull.stream is not None
        watcher = Watcher(pull.stream)
        await watcher.wait(frames=30, keyframes=1)
        (viewer,) = server.viewers
        assert viewer.udp
        assert (pull.stream.width, pull.stream.height) == (320, 240)
        assert pull.connections == 1
    finally:
        if watcher is not None:
            await watcher.stop()
        await pull.stop()
    await until(lambda: not server.viewers)  # torn down


def test_pull_transport_is_checked() -> None:
    with pytest.raises(ValueError):
        RtspPull(StreamRegistry(), "x", "rtsp://h/x", transport="sctp")  # type: ignore[arg-type]


async def test_a_udp_player_that_vanishes_is_dropped_and_rtcp_breaks_nothing(
    servers: Callable[..., Any],
) -> None:
    server = await servers(session_timeout=1)
    assert server.udp_ports is not None
    loop = asyncio.get_running_loop()
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.setblocking(False)
    rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp.bind(("127.0.0.1", 0))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        client = RtspClientConnection(
            f"rtsp://127.0.0.1:{server.port}/{NAME}",
            udp_ports=(rtp.getsockname()[1], rtcp.getsockname()[1]),
        )
        client.start()
        async with asyncio.timeout(10):
            playing = False
            while not playing:
                writer.write(client.data_to_send())
                data = await reader.read(65536)
                assert data
                playing = any(isinstance(e, Playing) for e in client.receive_data(data))
        assert client.server_ports == server.udp_ports
        # Receiver reports (garbage ones too) from the player's RTCP port keep the session
        # alive past its timeout without a single request on the connection.
        units = 0
        async with asyncio.timeout(20):
            for _ in range(8):
                rtcp.sendto(b"\x81\xc9\x00\x01garbage!", ("127.0.0.1", server.udp_ports[1]))
                rtp.sendto(b"punch", ("127.0.0.1", server.udp_ports[0]))
                end = loop.time() + 0.25
                while loop.time() < end:
                    try:
                        datagram = await asyncio.wait_for(loop.sock_recv(rtp, 65536), end - loop.time())
                    except TimeoutError:
                        break
                    units += len(client.receive_rtp(datagram))
        assert units > 0 and len(server.viewers) == 1
        # Then it vanishes: no RTCP, no keepalive, the connection left open.
        await until(lambda: not server.viewers, timeout=10)
        assert await asyncio.wait_for(reader.read(65536), 5) == b""  # the server closed it
    finally:
        writer.close()
        rtp.close()
        rtcp.close()


# --- publishing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_ffmpeg_publishes_and_ffprobe_reads_it_back(
    servers: Callable[..., Any], clip: Path, transport: str
) -> None:
    server = await servers()
    registry = server.registry
    url = f"rtsp://127.0.0.1:{server.port}/pushed"
    async with ffmpeg_push(url, clip, transport):
        await until(lambda: registry.get("pushed") is not None)
        stream = registry.get("pushed")
        assert stream is not None
        (push,) = server.pushes
        assert isinstance(push, RtspPush) and stream.source is push
        assert stream.video_codec is not None and stream.video_codec.name == "H264"
        watcher = Watcher(stream)
        try:
            await watcher.wait(frames=30, keyframes=2)
        finally:
            await watcher.stop()
        assert (stream.width, stream.height) == (320, 240)
        code, probe, err = await ffprobe(url)
        assert code == 0, err
        assert probe["streams"] == [{"codec_name": "h264", "width": 320, "height": 240}]
    # The publisher went away: the stream ended, its name is free.
    await until(lambda: registry.find("pushed") is None and not server.pushes)
    assert stream.ended


@pytest.mark.parametrize(
    ("transport", "audio", "relayed"),
    [
        ("tcp", ("-c:a", "aac"), "opus"),  # AAC is transcoded to Opus for WebRTC
        ("udp", ("-c:a", "aac"), "opus"),
        ("tcp", ("-c:a", "libopus"), "opus"),
        ("udp", ("-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1"), "PCMU"),
    ],
)
async def test_audio_in_a_push_never_stops_the_video(
    servers: Callable[..., Any], clip: Path, transport: str, audio: tuple[str, ...], relayed: str | None
) -> None:
    server = await servers()
    registry = server.registry
    async with ffmpeg_push(f"rtsp://127.0.0.1:{server.port}/pushed", clip, transport, audio):
        await until(lambda: registry.get("pushed") is not None)
        stream = registry.get("pushed")
        assert stream is not None
        watcher = Watcher(stream)
        try:
            await watcher.wait(frames=30, keyframes=1)
            audio_frames = 0
            if relayed is not None:
                # Relayed audio arrives as audio frames of the stream's audio codec.
                async with asyncio.timeout(10):
                    while audio_frames < 5:
                        frame = await watcher.subscription.audio.get()
                        assert frame is not None and frame.codec == relayed
                        audio_frames += 1
        finally:
            await watcher.stop()
        assert (stream.audio_codec.name if stream.audio_codec else None) == relayed


async def test_a_publish_to_a_name_with_a_source_is_refused(
    servers: Callable[..., Any], camera: ClipCamera, clip: Path
) -> None:
    server = await servers()
    async with ffmpeg_push(f"rtsp://127.0.0.1:{server.port}/{NAME}", clip, "tcp") as proc:
        err = await refused(proc)
    assert "409" in err
    responses, closed = await exchange(
        server.port,
        announce(f"rtsp://127.0.0.1:{server.port}/{NAME}", H264_SDP),
        then=request("OPTIONS", "*", 2),
    )
    assert [(r.status, r.reason) for r in responses] == [
        (409, "Conflict: the stream already has a source"),
        (200, "OK"),
    ]
    assert not closed
    assert camera.stream.source is camera and not camera.stream.ended and not server.pushes


async def test_authorize_publish_hook(servers: Callable[..., Any], clip: Path) -> None:
    asked: list[tuple[str, str]] = []

    async def authorize(name: str, query: str) -> str | None:
        asked.append((name, query))
        return None if query == "token=good" else "bad token\r\nX-Injected: 1"

    server = await servers(authorize_publish=authorize)
    base = f"rtsp://127.0.0.1:{server.port}/cams/pushed"
    responses, _ = await exchange(server.port, announce(base + "?token=bad", H264_SDP))
    assert [(r.status, r.reason) for r in responses] == [(403, "Forbidden: bad token X-Injected: 1")]
    assert responses[0].header("X-Injected") is None
    async with ffmpeg_push(base, clip, "tcp") as proc:
        assert "403" in await refused(proc)
    async with ffmpeg_push(base + "?token=good", clip, "udp"):
        await until(lambda: server.registry.get("cams/pushed") is not None)
    assert asked == [("cams/pushed", "token=bad"), ("cams/pushed", ""), ("cams/pushed", "token=good")]


async def test_bad_publishing_input_does_not_disturb_a_reader(
    servers: Callable[..., Any], camera: ClipCamera
) -> None:
    server = await servers()
    port = server.port
    pull = RtspPull(StreamRegistry(), "copy", f"rtsp://127.0.0.1:{port}/{NAME}", timeout=5.0)
    await pull.start()
    watcher: Watcher | None = None
    try:
        await until(lambda: pull.connected)
        assert pull.stream is not None
        watcher = Watcher(pull.stream)
        await watcher.wait(frames=10)
        base = f"rtsp://127.0.0.1:{port}/bad"
        no_video = H264_SDP.replace("m=video 0 RTP/AVP 96", "m=audio 0 RTP/AVP 0").replace(
            "H264/90000", "PCMU/8000"
        )

        def setup(uri: str) -> bytes:
            transport = ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")
            return Request("SETUP", uri, (("CSeq", "2"), transport)).encode()

        # Refused, the connection goes on. Each case on its own name: a publisher's name
        # is free again only once the server saw its connection close.
        text_plain = H264_SDP.encode()
        cases: list[tuple[bytes, Callable[[str], bytes], list[int]]] = [
            (b"\x00\xff garbage \x01" * 50, lambda url: b"", [400]),
            (b"hello, not an SDP", lambda url: b"", [400]),
            (no_video.encode(), lambda url: b"", [415]),
            (b"", lambda url: b"", [415]),  # text/plain, below
            (H264_SDP.replace("96", "x").encode(), lambda url: b"", [400]),
            (b"", lambda url: b"", [455]),  # RECORD, no ANNOUNCE nor SETUP: below
            (text_plain, lambda url: request("RECORD", url, 2), [200, 455]),  # RECORD before SETUP
            (text_plain, lambda url: setup(url + "/streamid=9"), [200, 404]),  # no such track
            (text_plain, lambda url: request("PLAY", url, 2), [200, 455]),  # PLAY when publishing
        ]
        for index, (body, then, statuses) in enumerate(cases):
            url = f"{base}{index}"
            if index == 3:
                data = announce(url, text_plain, content_type="text/plain")
            elif index == 5:
                data = request("RECORD", url)
            else:
                data = announce(url, body)
            responses, closed = await exchange(port, data, then=then(url))
            assert [r.status for r in responses] == statuses, index
            assert all(r.reason for r in responses)
            assert not closed, index
        # Refused, the connection closed: an SDP over the size limit.
        responses, closed = await exchange(port, announce(base, H264_SDP + "a=x:" + "y" * 70_000 + "\r\n"))
        assert [r.status for r in responses] == [413] and closed
        # Nothing was left behind, and the reader never stopped.
        await until(
            lambda: not server.pushes and not [s for s in server.registry.streams() if s.name != NAME]
        )
        frames = watcher.frames
        await watcher.wait(frames=frames + 30, keyframes=watcher.keyframes + 1)
        assert pull.connections == 1
    finally:
        if watcher is not None:
            await watcher.stop()
        await pull.stop()


async def test_authorization_hooks_that_fail_or_refuse(servers: Callable[..., Any]) -> None:
    """Publish and play hooks alike: a refusal answers 403 with its reason, a hook that
    raises answers 503, and the server goes on answering (a good token still plays)."""

    async def authorize(name: str, query: str) -> str | None:
        if query == "token=boom":
            raise RuntimeError("the access service is down")
        return None if query == "token=good" else "bad token"

    server = await servers(authorize_publish=authorize, authorize_play=authorize)
    base = f"rtsp://127.0.0.1:{server.port}"
    answers = []
    for query in ("boom", "bad"):
        responses, _ = await exchange(server.port, announce(f"{base}/cams/pushed?token={query}", H264_SDP))
        answers.append([(r.status, r.reason) for r in responses])
        responses, _ = await exchange(server.port, request("DESCRIBE", f"{base}/{NAME}?token={query}"))
        answers.append([(r.status, r.reason) for r in responses])
    assert answers == [
        [(503, "Service Unavailable: publish authorization failed")],
        [(503, "Service Unavailable: play authorization failed")],
        [(403, "Forbidden: bad token")],
        [(403, "Forbidden: bad token")],
    ]
    responses, _ = await exchange(server.port, request("DESCRIBE", f"{base}/{NAME}?token=good"))
    assert [r.status for r in responses] == [200]
    assert server.registry.get("cams/pushed") is None
