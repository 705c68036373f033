"""RTSP both ways, over TCP-interleaved RTP, on loopback: `RtspServer` serving a stream fed
from a pre-encoded clip to a real ffprobe and to `RtspPull` (with Digest credentials, across
a server restart), a stalled player and bad input that must not disturb the other players.
UDP and publishing (ANNOUNCE/RECORD) are in test_rtsp_push.py."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

from gateway.media.registry import StreamRegistry
from gateway.media.rtsp.client import Playing, RtspClientConnection
from gateway.media.rtsp.message import Request, Response, RtspParser
from gateway.media.sinks.rtsp import RtspViewer
from gateway.media.sources.rtsp import RtspPull
from gateway.media.stream import Stream
from tests.conftest import free_port
from tests.integration.conftest import RTSP_TEST_STREAM, ClipCamera

NAME = RTSP_TEST_STREAM  # a DJI video_id: slashes in the path
CREDENTIALS = ("pilot", "s3cret")


class Watcher:
    """A subscriber of a Stream that counts the frames and keyframes it gets."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.frames = 0
        self.keyframes = 0
        self.subscription = stream.subscribe(self)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while (frame := await self.subscription.video.get()) is not None:
            self.frames += 1
            self.keyframes += frame.keyframe

    async def wait(self, frames: int, keyframes: int = 1, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while self.frames < frames or self.keyframes < keyframes:
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.stream.unsubscribe(self.subscription)
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def on_video_format(self, width: int, height: int) -> None:
        pass

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        pass

    def on_stream_end(self, info: str | None) -> None:
        pass


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def run_tool(*command: str, timeout: float) -> tuple[int, bytes, str]:
    """Run ``command`` (ffprobe, ffmpeg) to its end within ``timeout``, killed otherwise:
    its exit code, output and error output."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode(errors="replace")


async def ffprobe(url: str, timeout: float = 30.0, transport: str = "tcp") -> tuple[int, dict[str, Any], str]:
    code, out, err = await run_tool(
        *("ffprobe", "-v", "error", "-rtsp_transport", transport, "-timeout", "10000000"),
        *("-show_entries", "stream=codec_name,width,height", "-of", "json", url),
        timeout=timeout,
    )
    return code, json.loads(out or b"{}"), err


# --- serving to ffprobe ------------------------------------------------------------------------


async def test_ffprobe_reads_a_served_stream(servers: Callable[..., Any]) -> None:
    server = await servers()
    code, probe, err = await ffprobe(f"rtsp://127.0.0.1:{server.port}/{NAME}")
    assert code == 0, err
    assert probe["streams"] == [{"codec_name": "h264", "width": 320, "height": 240}]
    await until(lambda: not server.viewers)  # ffprobe tore down


async def test_ffprobe_needs_the_credentials(servers: Callable[..., Any]) -> None:
    server = await servers(credentials=CREDENTIALS)
    base = f"127.0.0.1:{server.port}/{NAME}"
    code, probe, err = await ffprobe(f"rtsp://pilot:s3cret@{base}")
    assert code == 0, err
    assert probe["streams"] == [{"codec_name": "h264", "width": 320, "height": 240}]
    for url in (f"rtsp://{base}", f"rtsp://pilot:wrong@{base}"):
        code, _, err = await ffprobe(url)
        assert code != 0
        assert "401" in err


# --- pulling -----------------------------------------------------------------------------------


async def test_pull_with_digest_survives_a_server_restart(servers: Callable[..., Any]) -> None:
    port = free_port()
    server = await servers(port, credentials=CREDENTIALS)
    pulled = StreamRegistry()
    pull = RtspPull(pulled, "copy", f"rtsp://pilot:s3cret@127.0.0.1:{port}/{NAME}", timeout=5.0)
    await pull.start()
    watcher: Watcher | None = None
    try:
        await until(lambda: pull.connected)
        stream = pull.stream
        assert stream is not None
        watcher = Watcher(stream)
        await watcher.wait(frames=30, keyframes=1)
        assert (stream.width, stream.height) == (320, 240)
        assert stream.video_codec is not None and stream.video_codec.name == "H264"
        assert (stream.ingest, stream.source) == ("rtsp", pull)
        assert pulled.get("copy") is stream

        await server.stop()
        await until(lambda: not pull.connected)
        assert stream.source is None and not stream.ended  # detached, not ended
        assert pulled.find("copy") is stream and watcher.subscription in stream.subscriptions

        frames, keyframes = watcher.frames, watcher.keyframes
        await servers(port, credentials=CREDENTIALS)  # the same port again
        await watcher.wait(frames=frames + 30, keyframes=keyframes + 1, timeout=30)
        assert pull.stream is stream and stream.source is pull and pull.connections == 2
        assert not stream.ended
    finally:
        if watcher is not None:
            await watcher.stop()
        await pull.stop()
    assert not pull.connected and stream.source is None and not stream.ended  # the owner ends it
    pulled.release(stream)


async def test_pull_times_out_a_silent_server_and_reconnects() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pull = RtspPull(StreamRegistry(), "silent", f"rtsp://127.0.0.1:{port}/x", timeout=0.5, backoff=(0.1, 0.2))
    await pull.start()
    try:
        await until(lambda: len(accepted) >= 3)
        assert not pull.connected and pull.stream is None
    finally:
        await pull.stop()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_stream_that_ends_closes_its_players(servers: Callable[..., Any], camera: ClipCamera) -> None:
    server = await servers()
    url = f"rtsp://127.0.0.1:{server.port}/{NAME}"
    pull = RtspPull(StreamRegistry(), "copy", url, timeout=5.0, backoff=(0.2, 0.5))
    await pull.start()
    try:
        await until(lambda: pull.connected and bool(server.viewers))
        camera.registry.release(camera.stream)
        await until(lambda: not pull.connected and not server.viewers)
        assert pull.stream is not None and not pull.stream.ended  # the pulled one waits for its owner
        responses, _ = await exchange(server.port, request("DESCRIBE", url))
        assert [r.status for r in responses] == [404]
    finally:
        await pull.stop()


async def test_a_bad_url_fails_the_pull_not_its_owner() -> None:
    pull = RtspPull(StreamRegistry(), "x", "http://not-rtsp/")  # what a device might reply
    await pull.start()
    try:
        await until(lambda: pull.failed is not None, timeout=5)
        assert "rtsp" in (pull.failed or "")
        assert not pull.connected and pull.stream is None
    finally:
        await pull.stop()


# --- bad input and stalled players ---------------------------------------------------------------


async def exchange(
    port: int, data: bytes, *, then: bytes = b"", timeout: float = 10.0
) -> tuple[list[Response], bool]:
    """Send ``data`` (and ``then`` after the first answer) on a fresh connection; the
    answers, and whether the server closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = RtspParser()
    responses: list[Response] = []
    closed = False
    try:
        writer.write(data)
        async with asyncio.timeout(timeout):
            expected = 2 if then else 1
            while len(responses) < expected:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                for message in parser.receive_data(chunk):
                    assert isinstance(message, Response)
                    responses.append(message)
                    if then and len(responses) == 1:
                        writer.write(then)
            if not closed and responses and responses[0].header("Connection") == "close":
                closed = await reader.read(1) == b""
    except ConnectionResetError:
        closed = True  # closed with our request unread (too big to read): a reset
    finally:
        writer.close()
        await asyncio.gather(asyncio.wait_for(writer.wait_closed(), timeout), return_exceptions=True)
    return responses, closed


def request(method: str, uri: str, cseq: int = 1) -> bytes:
    return Request(method, uri, (("CSeq", str(cseq)),)).encode()


async def test_bad_input_and_a_stalled_player_do_not_disturb_other_players(
    servers: Callable[..., Any], camera: ClipCamera
) -> None:
    server = await servers(max_unsent_bytes=32 * 1024, socket_send_buffer=8 * 1024)
    port = server.port
    url = f"rtsp://127.0.0.1:{port}/{NAME}"
    pulled = StreamRegistry()
    pull = RtspPull(pulled, "copy", url, timeout=5.0)
    await pull.start()
    stalled: asyncio.StreamWriter | None = None
    watcher: Watcher | None = None
    try:
        await until(lambda: pull.connected)
        assert pull.stream is not None
        watcher = Watcher(pull.stream)
        await watcher.wait(frames=10)

        # Refused, the connection closed.
        for garbage in (
            b"hello\r\n\r\n",
            bytes(range(256)) * 4,
            b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX-Filler: " + b"a" * 10_000 + b"\r\n\r\n",
            b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 10000000\r\n\r\n",
            # int() refuses over 4300 digits with ValueError (found by test_fuzz_rtsp).
            b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ):
            responses, closed = await exchange(port, garbage)
            assert [r.status for r in responses] in ([400], [413], [505]), garbage[:40]
            assert closed, garbage[:40]
        # Refused, the connection goes on.
        for bad, status in (
            (request("FLY", url), 501),
            (request("RECORD", url), 455),  # no ANNOUNCE, no SETUP
            (request("PAUSE", url), 405),
            (request("DESCRIBE", f"rtsp://127.0.0.1:{port}/no/such/stream"), 404),
            (request("DESCRIBE", f"rtsp://127.0.0.1:{port}/../../etc/passwd"), 400),
            (request("DESCRIBE", f"rtsp://127.0.0.1:{port}/SN/%2e%2e/{NAME}"), 400),
            (
                request("SETUP", url + "/trackID=0").replace(
                    b"\r\n\r\n", b"\r\nTransport: RTP/AVP;unicast\r\n\r\n"
                ),
                461,
            ),
        ):
            responses, closed = await exchange(port, bad, then=request("OPTIONS", "*", 2))
            assert [r.status for r in responses] == [status, 200], bad[:40]
            assert not closed

        # A player that stops reading once it plays: it skips frames, the others do not wait.
        before = set(server.viewers)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, stalled = await asyncio.open_connection(sock=sock)
        client = RtspClientConnection(url)
        client.start()
        async with asyncio.timeout(10):
            playing = False
            while not playing:
                stalled.write(client.data_to_send())
                data = await reader.read(65536)
                assert data
                playing = any(isinstance(e, Playing) for e in client.receive_data(data))
        (viewer,) = set(server.viewers) - before
        assert isinstance(viewer, RtspViewer)
        frames = watcher.frames
        # Dropping more than a GOP's worth (what a joining player skips) means it skips for
        # congestion; meanwhile the other player keeps getting frames.
        await until(lambda: viewer.subscription.video.dropped > 60, timeout=30)
        await watcher.wait(frames=frames + 30, keyframes=watcher.keyframes + 1)
        assert pull.connected and pull.connections == 1

        # The server still takes new players.
        responses, _ = await exchange(port, request("OPTIONS", "*"))
        assert [r.status for r in responses] == [200]
    finally:
        if stalled is not None:
            stalled.close()
        if watcher is not None:
            await watcher.stop()
        await pull.stop()
