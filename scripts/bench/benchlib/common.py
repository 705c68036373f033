"""Pieces shared by the child processes of the benchmark.

Every child process talks to the orchestrator with one JSON object per line:
requests on stdin (``{"id": 1, "cmd": "...", ...}``), replies on stdout
(``{"id": 1, "ok": true, ...}``). stdin is read by a daemon thread that hands
lines to the event loop, so no event loop ever blocks on the pipe. End of
stdin means "exit".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Role(Protocol):
    async def handle(self, request: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...


LOOPBACK = "127.0.0.1"


def restrict_ice_to_loopback() -> None:
    """Make aioice offer host candidates on 127.0.0.1 only (it skips loopback by default)."""
    import aioice.ice

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [LOOPBACK] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback_only


def disable_decoding() -> None:
    """Replace aiortc's receive-side decoders with one that drops every frame."""
    import aiortc.rtcrtpreceiver
    from aiortc.codecs.base import Decoder

    class NullDecoder(Decoder):
        def decode(self, encoded_frame: Any) -> list[Any]:
            return []

    def get_decoder(codec: Any) -> Decoder:
        return NullDecoder()

    aiortc.rtcrtpreceiver.get_decoder = get_decoder


def lighten_receivers() -> None:
    """Make every aiortc receiver in this process only count what it receives.

    Replaces `RTCRtpReceiver._handle_rtp_packet` with one that feeds the RTCP
    statistics (so receiver reports and `getStats()` inbound-rtp
    `packetsReceived`/`packetsLost` stay right) and does nothing else: no
    bitrate estimator (REMB), no NACK generation, no depayloading, no jitter
    buffer, no PLI. SRTP decryption, RTP parsing and RTCP still run. This
    keeps a viewer process at a fraction of the stock receive cost, so 100
    viewers and the server under test fit on two cores. Without NACKs, a lost
    packet is not retransmitted, so loss shows up in the counts.
    """
    from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
    from aiortc.rtp import RtpPacket

    async def count_only(self: RTCRtpReceiver, packet: RtpPacket, arrival_time_ms: int) -> None:
        codec = self._RTCRtpReceiver__codecs.get(packet.payload_type)  # type: ignore[attr-defined]
        if codec is None or codec.name == "rtx":
            return
        streams = self._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)

    for name in ("_RTCRtpReceiver__codecs", "_RTCRtpReceiver__remote_streams"):
        probe = RTCRtpReceiver.__init__.__code__.co_names
        if name not in probe:
            raise RuntimeError(f"aiortc changed: RTCRtpReceiver has no {name}")
    RTCRtpReceiver._handle_rtp_packet = count_only  # type: ignore[method-assign]


def setup_child_logging(role: str) -> None:
    level = os.environ.get("BENCH_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level, logging.WARNING),
        format=f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )


def _write(obj: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj) + b"\n")
    sys.stdout.buffer.flush()


async def serve_commands(handler: Handler, on_exit: Callable[[], Awaitable[None]]) -> None:
    """Run `handler` for each request line on stdin until EOF or a ``quit`` request.

    Requests are handled one at a time, in order. `on_exit` runs before returning,
    bounded to 20 s.
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    def reader() -> None:
        try:
            for raw in sys.stdin.buffer:
                loop.call_soon_threadsafe(lines.put_nowait, raw)
        finally:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=reader, name="stdin-reader", daemon=True).start()
    try:
        while True:
            raw = await lines.get()
            if raw is None:
                break
            try:
                request = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            rid = request.get("id")
            if request.get("cmd") == "quit":
                _write({"id": rid, "ok": True})
                break
            try:
                reply = await handler(request)
                _write({"id": rid, "ok": True, **reply})
            except Exception as exc:  # reported to the orchestrator, which decides
                logging.getLogger("bench").exception("command %s failed", request.get("cmd"))
                _write({"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(on_exit(), 20.0)


def run_role(name: str, make: Callable[[], Role]) -> None:
    """Run a child role: its logging, ICE on loopback only, then the role made by `make`
    (inside the event loop) serves commands until stdin closes."""
    setup_child_logging(name)
    restrict_ice_to_loopback()

    async def main() -> None:
        role = make()
        await serve_commands(role.handle, role.close)

    asyncio.run(main())
