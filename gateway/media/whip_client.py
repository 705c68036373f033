"""A WHIP client (RFC 9725): publishes an aiortc video track to a WHIP endpoint.

The simulated dock pushes with it when asked for url_type 4, and tests use it to reach
the gateway's WHIP ingest. The offer is sent once with every candidate (no trickle ICE);
`stop` DELETEs the session resource the server gave in ``Location``.
"""

from __future__ import annotations

import contextlib
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from gateway.log import get_logger
from gateway.media.webrtc.sdp import capabilities

log = get_logger(__name__)

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20)


class WhipError(Exception):
    """The endpoint refused the offer; ``status`` is its HTTP status (0: unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"WHIP {status}: {message}" if status else f"WHIP: {message}")
        self.status = status


class WhipClient:
    def __init__(
        self,
        url: str,
        track: MediaStreamTrack,
        *,
        configuration: RTCConfiguration | None = None,
        video_codecs: tuple[str, ...] = ("video/H264",),
    ) -> None:
        self.url = url
        self.track = track
        # No STUN unless asked: the endpoint is usually on the same network.
        self.pc = RTCPeerConnection(configuration or RTCConfiguration(iceServers=[]))
        self.video_codecs = video_codecs
        self.resource: str | None = None  # the session URL from Location

    async def start(self) -> None:
        """Offer, POST, apply the answer. Raises WhipError when refused or unreachable."""
        transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
        transceiver.setCodecPreferences(capabilities(self.video_codecs, "video"))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription.sdp
        try:
            async with (
                aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
                http.post(self.url, data=offer, headers={"Content-Type": "application/sdp"}) as reply,
            ):
                body = await reply.text()
                if reply.status != 201:
                    raise WhipError(reply.status, body[:300])
                location = reply.headers.get("Location")
        except aiohttp.ClientError as exc:
            raise WhipError(0, f"cannot reach {self.url}: {exc}") from None
        self.resource = urljoin(self.url, location) if location else None
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        log.info("whip_client_publishing", url=self.url)

    @property
    def connection_state(self) -> str:
        return self.pc.connectionState

    async def stop(self) -> None:
        """End the session: DELETE the resource (best effort) and close the connection."""
        resource, self.resource = self.resource, None
        if resource is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http, http.delete(resource):
                    pass
        await self.pc.close()
