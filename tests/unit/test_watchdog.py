"""`ReadWatchdog` on a real loopback connection: data before the deadline moves it on (the
read goes on); silence past it ends the pending read with end of file and says so."""

from __future__ import annotations

import asyncio

from gateway.watchdog import ReadWatchdog


async def test_activity_moves_the_deadline_and_silence_ends_the_read() -> None:
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    server = await asyncio.start_server(lambda r, w: accepted.put_nowait((r, w)), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await accepted.get()
    loop = asyncio.get_running_loop()
    last = loop.time()
    watchdog = ReadWatchdog(reader, writer.transport, lambda: last + 0.3)
    try:
        started = loop.time()
        for _ in range(4):  # 0.6 s of reads, each within 0.3 s of the one before
            await asyncio.sleep(0.15)
            client.write(b"x")
            assert await reader.read(100) == b"x"
            last = loop.time()
        assert not watchdog.expired
        assert loop.time() - started > 0.3  # outlived its first deadline
        async with asyncio.timeout(5):
            assert await reader.read(100) == b""
        assert watchdog.expired
        assert loop.time() - last >= 0.3
        client.write(b"late")  # reading is paused: no data after the end of file
        await asyncio.sleep(0.1)
        assert await reader.read(100) == b""
    finally:
        watchdog.cancel()
        client.close()
        writer.close()
        server.close()
        await server.wait_closed()


async def test_cancel_stops_the_timer() -> None:
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    server = await asyncio.start_server(lambda r, w: accepted.put_nowait((r, w)), "127.0.0.1", 0)
    _, client = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    reader, writer = await accepted.get()
    loop = asyncio.get_running_loop()
    watchdog = ReadWatchdog(reader, writer.transport, lambda: loop.time() - 1 + 0.1)
    watchdog.cancel()
    await asyncio.sleep(0.3)
    assert not watchdog.expired
    client.write(b"y")
    assert await reader.read(100) == b"y"
    client.close()
    writer.close()
    server.close()
    await server.wait_closed()
