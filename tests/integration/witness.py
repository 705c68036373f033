"""A witness: a WebSocket publisher and a decoding player that must keep streaming while a
test sends the gateway bad input. One for every bad-input test."""

from __future__ import annotations

from typing import Any, Protocol

from aiortc import MediaStreamTrack

from gateway.wcs.client import ClientStream, WcsClient
from tests.integration.conftest import FrameCounter


class HasHealth(Protocol):
    """A gateway process (`/healthz` over HTTP) or an in-process `Gateway`."""

    def health(self) -> dict[str, Any]: ...


class Witness:
    def __init__(
        self,
        clients: list[WcsClient],
        publisher: ClientStream,
        player: ClientStream,
        counter: FrameCounter,
        gateway: HasHealth | None,
    ) -> None:
        self.clients, self.publisher, self.player, self.counter = clients, publisher, player, counter
        self.gateway = gateway

    @classmethod
    async def start(
        cls, ws_url: str, track: MediaStreamTrack, gateway: HasHealth | None = None, name: str = "witness"
    ) -> Witness:
        """Publish ``track`` as ``name`` and play it, until frames are decoded."""
        pub_client, play_client = await WcsClient.connect(ws_url), await WcsClient.connect(ws_url)
        publisher = await pub_client.publish(name, [track])
        await publisher.wait_status("PUBLISHING")
        player = await play_client.play(name, kinds=("video",))
        await player.wait_status("PLAYING")
        counter = FrameCounter(player).start()
        await counter.wait_frames(5)
        return cls([pub_client, play_client], publisher, player, counter, gateway)

    async def assert_streaming(self, gateway: HasHealth | None = None) -> None:
        """10 more frames decoded, neither side told of a failure, and the gateway healthy."""
        await self.counter.wait_frames(len(self.counter.pts) + 10, timeout=20)
        assert self.publisher.status == "PUBLISHING" and self.player.status == "PLAYING"
        checked = gateway or self.gateway
        if checked is not None:
            assert checked.health().get("status", "ok") == "ok"

    async def stop(self) -> None:
        await self.counter.stop()
        for client in self.clients:
            await client.close()
