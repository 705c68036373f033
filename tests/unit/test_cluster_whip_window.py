"""A WHIP push holds its stream from its offer on, not only once its answer is made (ICE
gathering can take seconds): a push returning with the same key on another worker (the
keys are per worker) cannot take the stream over while this one still negotiates
(`WorkerLink._hand_over` refuses, by `StreamRegistry.resumable`). Chrome's offer, answered
by the real WHIP ingest."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.media.ingest_keys import IngestKeys
from gateway.media.registry import StreamRegistry
from gateway.media.sources.whip import WhipIngest
from gateway.media.webrtc.peer import RtcSettings
from tests.unit.test_cluster_link import worker

pytestmark = pytest.mark.timeout(20)


async def test_a_whip_push_still_negotiating_keeps_its_stream_from_a_takeover(
    tmp_path: Path, publish_offer: str
) -> None:
    keys = IngestKeys()
    link = worker(0, tmp_path)
    registry: StreamRegistry = link.registry
    grant = keys.issue("cam", keep_stream=True)
    whip = WhipIngest(registry, keys, RtcSettings())
    try:
        for _ in ("the first push", "the push returning here"):
            publishing = asyncio.ensure_future(whip.publish(grant.key, publish_offer))
            while not whip.pushes:  # to the publish's first wait (answering: ICE gathering)
                await asyncio.sleep(0)
            assert not publishing.done()
            stream = registry.find("cam")
            assert stream is not None and registry.resumable("cam") is None
            assert not await link._hand_over({"name": "cam", "to": 1})
            resource, _ = await publishing
            assert registry.resumable("cam") is None  # answered, then streaming: still held
            assert await whip.delete(grant.key, resource)
            # Gone (a key keeping its stream): a push here or on another worker may resume it.
            assert registry.resumable("cam") is stream and not whip.pushes
        assert await link._hand_over({"name": "cam", "to": 1})
        assert registry.is_mirror(stream)
    finally:
        await whip.stop()
