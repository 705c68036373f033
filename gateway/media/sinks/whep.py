"""WHEP egress: a player POSTs an SDP offer to ``/whep/{name}`` and receives the stream
over WebRTC, relayed like a WCS player's (no decoding). A drone camera or an ``rtsp://``
name starts on demand, as for a WebSocket play. The player DELETEs its session resource
to stop; a session whose peer fails or whose stream ends is closed by the gateway. An
offer with a data channel section gets the stream's telemetry on a ``telemetry`` channel.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from gateway.log import get_logger
from gateway.media.names import BadStreamName, validate_stream_name
from gateway.media.offers import OfferRefused, answer_offer, check_offer_size
from gateway.media.registry import StreamRegistry, StreamUnavailable, Viewing
from gateway.media.sinks.webrtc import WebRtcViewer
from gateway.media.webrtc.peer import RtcSettings
from gateway.tasks import TaskSet

log = get_logger(__name__)


@dataclass(eq=False)
class WhepSession:
    resource: str
    name: str
    viewer: WebRtcViewer
    viewing: Viewing  # closed when this ends (an on-demand source counts this viewer)


class WhepViewerEvents:
    """A WHEP player has no signalling channel: its session only needs to end on failure."""

    def __init__(self, egress: WhepEgress, resource: str) -> None:
        self._egress, self._resource = egress, resource

    def on_started(self) -> None:
        log.info("whep_playing", resource=self._resource)

    def on_failed(self, info: str) -> None:
        self._egress.end_later(self._resource, info)

    def on_video_format(self, width: int, height: int) -> None:
        """The player sees the new size in the video itself."""

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        """No channel to deliver stream events on."""

    def on_stream_end(self, info: str | None) -> None:
        self._egress.end_later(self._resource, info or "the stream ended")


class WhepEgress:
    def __init__(self, registry: StreamRegistry, settings: RtcSettings, telemetry_rate: float = 10.0) -> None:
        self.registry = registry
        self.settings = settings
        self.telemetry_rate = telemetry_rate  # on the data channel, for offers with one
        self.sessions: dict[str, WhepSession] = {}
        self._endings = TaskSet("whep")

    async def play(self, name: str, offer_sdp: str) -> tuple[str, str]:
        """Answer a player's offer for ``name``: the new resource id and the SDP answer."""
        check_offer_size(offer_sdp)
        try:
            validate_stream_name(name)  # before it reaches an on-demand source (a pull by URL)
        except BadStreamName as exc:
            raise OfferRefused(400, str(exc)) from None
        viewing = self.registry.viewing(name)
        try:
            stream = await viewing.open()
        except StreamUnavailable as exc:
            raise OfferRefused(404, exc.info) from None
        resource = secrets.token_urlsafe(12)
        viewer = WebRtcViewer(stream, self.settings, WhepViewerEvents(self, resource))
        session = self.sessions[resource] = WhepSession(resource, name, viewer, viewing)
        answer = await answer_offer(viewer.accept(offer_sdp), lambda reason: self._end(session, reason))
        if viewer.data_channel is not None:
            viewer.start_telemetry(self.registry.telemetry, self.telemetry_rate)
        log.info("whep_offer_accepted", stream=name, resource=resource)
        return resource, answer

    async def delete(self, resource: str) -> bool:
        session = self.sessions.get(resource)
        if session is None:
            return False
        await self._end(session, "deleted by the client")
        return True

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            await self._end(session, "gateway stopping")

    def end_later(self, resource: str, reason: str) -> None:
        session = self.sessions.get(resource)
        if session is not None:
            self._endings.spawn(self._end(session, reason))

    async def _end(self, session: WhepSession, reason: str) -> None:
        if self.sessions.pop(session.resource, None) is None:
            return
        await session.viewer.close()
        session.viewing.close()
        log.info("whep_session_ended", stream=session.name, resource=session.resource, reason=reason)
