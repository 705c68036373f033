"""What the RTMP property tests (tests/unit/test_fuzz_rtmp.py) found, sent to a running gateway:
each connection is closed, and a push on another connection keeps playing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.media.rtmp import chunks
from gateway.media.rtmp.chunks import HANDSHAKE_SIZE
from tests.integration.conftest import play_and_decode, wait_stream
from tests.integration.test_rtmp_ingest import Pushes, rtmp_url


def full_chunk(csid: int, body: bytes, length: int | None = None) -> bytes:
    """A fmt 0 video chunk on any chunk stream id (two- and three-byte basic headers too)."""
    if csid < 64:
        basic = bytes([csid])
    elif csid < 320:
        basic = bytes([0, csid - 64])
    else:
        basic = bytes([1, (csid - 64) & 0xFF, (csid - 64) >> 8])
    size = len(body) if length is None else length
    return basic + bytes(3) + size.to_bytes(3, "big") + bytes([chunks.VIDEO]) + bytes(4) + body


MANY_CHUNK_STREAMS = b"".join(full_chunk(csid, b"x") for csid in range(300, 301 + chunks.MAX_CHUNK_STREAMS))
# 128 bytes of a 300-byte message, then a fmt 1 header saying the message is 10 bytes long.
SHORTENED = (
    full_chunk(3, b"a" * 128, length=300) + bytes([0x43]) + bytes(3) + (10).to_bytes(3, "big") + b"\x09"
)


@pytest.fixture
def witness() -> Iterator[Pushes]:
    started = Pushes()
    yield started
    started.stop_all()


async def closed_after(port: int, data: bytes) -> bool:
    """Handshake, send ``data``: True if the gateway then closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x03" + bytes(HANDSHAKE_SIZE))
        await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
        writer.write(bytes(HANDSHAKE_SIZE) + data)
        await writer.drain()
        async with asyncio.timeout(10):
            while await reader.read(65536):
                pass
        return True
    except (ConnectionError, asyncio.IncompleteReadError):
        return True
    finally:
        writer.close()


async def test_hostile_chunks_close_their_connection_and_a_push_keeps_playing(
    local_gateway: Gateway, clip: Path, witness: Pushes
) -> None:
    witness.start(clip, rtmp_url(local_gateway, "witness"))
    await wait_stream(local_gateway, "witness")
    await play_and_decode(local_gateway, "witness")
    port = local_gateway.config.rtmp_port
    assert port is not None
    for data in (MANY_CHUNK_STREAMS, SHORTENED):
        assert await closed_after(port, data)
    counter = await play_and_decode(local_gateway, "witness")
    assert (counter.frames[-1].width, counter.frames[-1].height) == (320, 240)
