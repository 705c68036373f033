"""An aiortc peer connection with the gateway's ICE settings, a connect deadline and one
place that turns connection state into "connected" / "failed" callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from gateway.media.webrtc.icemux import IceMux, IceMuxError
from gateway.media.webrtc.sdp import OfferError, add_public_candidates


@dataclass(frozen=True, slots=True)
class RtcSettings:
    stun_servers: tuple[str, ...] = ()
    public_ip: str | None = None
    ice_timeout: float = 20.0
    viewer_queue_frames: int = 90
    # Packetize once per stream and write each viewer's RTP directly (see fanout.py); off
    # means aiortc's stock sender per viewer.
    fast_fanout: bool = True
    # With it, each viewer's access unit in one burst (floor.py); off: per packet.
    fanout_floor: bool = True
    # A publisher's RTP handled synchronously as it arrives (passthrough.py); off: aiortc's
    # receive task per packet.
    fast_receive: bool = True
    # The shared WebRTC UDP/TCP ports (None: each peer connection opens its own sockets).
    ice_mux: IceMux | None = None

    def configuration(self) -> RTCConfiguration:
        servers = [RTCIceServer(urls=f"stun:{s}") for s in self.stun_servers]
        return RTCConfiguration(iceServers=servers)


class Peer:
    """One RTCPeerConnection. on_connected fires at most once; on_failed fires at most once,
    for a connection that never came up or one that was lost, never after close()."""

    open_count = 0  # peer connections created and not yet closed (health, leak tests)

    def __init__(
        self,
        settings: RtcSettings,
        on_connected: Callable[[], None],
        on_failed: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.pc = RTCPeerConnection(settings.configuration())
        Peer.open_count += 1
        self._closed = False
        self.state = "pending"  # pending -> connected -> done, or pending -> done
        self._on_connected = on_connected
        self._on_failed = on_failed
        self._deadline: asyncio.TimerHandle | None = None
        self.pc.on("connectionstatechange", self._state_changed)

    async def answer(
        self, offer_sdp: str, tcp_only: bool = False, before_answer: Callable[[], None] | None = None
    ) -> str:
        """Apply the offer, answer it with all local candidates included (the WebSDK does
        no trickle ICE), and start the connect deadline. ``tcp_only``: offer ICE-TCP
        candidates only (a client that cannot use UDP, WCS ``transport: "TCP"``).
        ``before_answer`` runs once the offer is applied, before the answer is made."""
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        if before_answer is not None:
            before_answer()  # e.g. open a data channel on the offer's SCTP section
        mux = self.settings.ice_mux
        if tcp_only and mux is None:
            raise OfferError("WebRTC over TCP is off on this server (webrtc_tcp_port = 0)")
        if mux is not None:
            try:
                mux.adopt(self.pc, tcp_only=tcp_only)
            except IceMuxError as exc:
                raise OfferError(str(exc)) from None
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        sdp = self.pc.localDescription.sdp
        if self.settings.public_ip:
            sdp = add_public_candidates(sdp, self.settings.public_ip)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.settings.ice_timeout, self._fail)
        return sdp

    def _state_changed(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.state == "pending":
            self.state = "connected"
            self._cancel_deadline()
            self._on_connected()
        elif state in ("failed", "closed"):
            self._fail()

    def _fail(self) -> None:
        self._deadline = None
        if self.state == "done":
            return
        info = "Connection lost" if self.state == "connected" else "Failed by ICE timeout"
        self.state = "done"
        self._on_failed(info)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    async def close(self) -> None:
        self._cancel_deadline()
        self.state = "done"  # closing is our decision: no failure callback for it
        if not self._closed:
            self._closed = True
            Peer.open_count -= 1
        await self.pc.close()
