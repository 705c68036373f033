"""WHIP ingest (RFC 9725): a device or encoder POSTs an SDP offer to ``/whip/{key}`` and
publishes over WebRTC; the gateway answers with all its candidates (no trickle ICE) and
relays the media like any WebRTC publisher, without decoding.

The key is a one-time ingest key (see ingest_keys.py): the DJI bridge issues one per
``live_start_push`` with url_type 4. Each accepted offer is a resource the client DELETEs
when it stops; a publisher that fails or goes silent is ended by the gateway.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from gateway.access import AccessPolicy, AccessRequest, Action
from gateway.log import get_logger
from gateway.media.ingest_keys import IngestKey, IngestKeys
from gateway.media.names import BadStreamName, validate_stream_name
from gateway.media.offers import OfferRefused, answer_offer, check_offer_size
from gateway.media.registry import INFO_NAME_RESERVED, StreamNameInUse, StreamNameReserved, StreamRegistry
from gateway.media.sources.webrtc import WebRtcPublisher
from gateway.media.stream import Stream
from gateway.media.webrtc.peer import RtcSettings
from gateway.tasks import TaskSet

log = get_logger(__name__)


@dataclass(eq=False)
class WhipPush:
    """One accepted WHIP session: a resource, the key it holds and its publisher."""

    resource: str
    grant: IngestKey
    stream: Stream
    publisher: WebRtcPublisher
    started: bool = field(default=False)


class WhipIngest:
    def __init__(
        self,
        registry: StreamRegistry,
        keys: IngestKeys,
        settings: RtcSettings,
        access: AccessPolicy | None = None,
    ) -> None:
        self.registry = registry
        self.keys = keys
        # With a policy, a path that is not an ingest key publishes under that name if the
        # policy allows it (a publish token in ``?token=``).
        self.access = access
        self.settings = settings
        self.pushes: dict[str, WhipPush] = {}  # by resource id
        self._endings = TaskSet("whip")

    async def publish(self, key: str, offer_sdp: str, token: str | None = None) -> tuple[str, str]:
        """Accept an offer for ``key`` (an ingest key, or a stream name the access policy
        allows): returns the new resource id and the SDP answer."""
        check_offer_size(offer_sdp)
        issued = self.keys.claim(key)
        grant = issued or await self._named(key, token)
        try:
            # A key the device camera's source issued may take its name; nothing else may.
            stream = await self.registry.claim_push(
                grant.stream_name, resume=grant.keep_stream, on_demand=issued is not None
            )
        except StreamNameReserved:
            raise OfferRefused(403, INFO_NAME_RESERVED) from None
        except StreamNameInUse:
            self.keys.release(grant.key)
            raise OfferRefused(409, "stream already has a source") from None
        resource = secrets.token_urlsafe(12)
        publisher = WebRtcPublisher(
            stream,
            self.settings,
            on_started=lambda: self._started(resource),
            on_failed=lambda info: self._failed(resource, info),
            ingest="whip",
        )
        push = self.pushes[resource] = WhipPush(resource, grant, stream, publisher)
        answer = await answer_offer(publisher.accept(offer_sdp), lambda reason: self._end(push, reason))
        log.info("whip_offer_accepted", stream=stream.name, resource=resource)
        return resource, answer

    async def _named(self, name: str, token: str | None) -> IngestKey:
        if self.access is None or self.keys.is_key(name):
            log.warning("whip_publish_refused", reason="unknown or used key")
            raise OfferRefused(403, "unknown, used or expired stream key")
        try:
            validate_stream_name(name)
        except BadStreamName as exc:
            raise OfferRefused(400, str(exc)) from None
        reason = await self.access.check(AccessRequest(Action.PUBLISH, name, token))
        if reason is not None:
            raise OfferRefused(403, reason)
        return IngestKey(name, name, keep_stream=False)

    async def delete(self, key: str, resource: str) -> bool:
        """The client stopped publishing. False when no such session (already ended)."""
        push = self.pushes.get(resource)
        if push is None or push.grant.key != key:
            return False
        await self._end(push, "deleted by the client")
        return True

    async def stop(self) -> None:
        for push in list(self.pushes.values()):
            await self._end(push, "gateway stopping")

    def _started(self, resource: str) -> None:
        push = self.pushes.get(resource)
        if push is not None:
            push.started = True
            log.info("whip_publishing", stream=push.stream.name, resource=resource)

    def _failed(self, resource: str, info: str) -> None:
        push = self.pushes.get(resource)
        if push is not None:
            self._endings.spawn(self._end(push, info))

    async def _end(self, push: WhipPush, reason: str) -> None:
        if self.pushes.pop(push.resource, None) is None:
            return
        self.keys.release(push.grant.key)
        if push.grant.keep_stream:
            push.stream.detach_source(push.publisher)  # the issuer decides when the stream ends
        else:
            self.registry.release(push.stream)
        await push.publisher.close()
        log.info("whip_push_ended", stream=push.stream.name, resource=push.resource, reason=reason)
