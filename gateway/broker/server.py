"""An embedded MQTT broker speaking MQTT 5.0 and 3.1.1 side by side, so docks, the
simulator and the bridge can talk with no other software installed. This is its thin asyncio
layer: sockets, timeouts and a timer around `core.BrokerCore`, which holds every rule
(sessions, QoS 0/1/2, retained messages, wills, properties, limits). Sessions live in memory
only (a restart forgets them). With credentials set, every client must log in with them.
Production may point skyrelay at EMQX or Mosquitto instead (`--mqtt`)."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.broker import codec
from gateway.broker.core import Action, BrokerCore, Close, Credentials
from gateway.log import get_logger
from gateway.net_limits import LISTEN_BACKLOG, ConnectionLimits
from gateway.tasks import TaskSet

log = get_logger(__name__)

CONNECT_TIMEOUT = 10.0
MAX_UNSENT = 4 * 1024 * 1024  # a subscriber this far behind is disconnected


class Broker:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        username: str | None = None,
        password: str | None = None,
        max_packet: int = codec.MAX_PACKET,
        connection_limits: ConnectionLimits | None = None,
    ) -> None:
        self.host, self.port = host, port
        credentials = Credentials(username, password or "") if username is not None else None
        self.core = BrokerCore(credentials=credentials, max_packet=max_packet)
        self.connection_limits = connection_limits
        self._server: asyncio.Server | None = None
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._handlers = TaskSet("mqtt_broker")
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        limits = self.connection_limits
        handler = self._connection if limits is None else limits.guard_streams("mqtt", self._connection)
        self._server = await asyncio.start_server(handler, self.host, self.port, backlog=LISTEN_BACKLOG)
        self._timer = asyncio.create_task(self._run_timer())
        login = self.core.credentials is not None
        log.info("mqtt_broker_listening", host=self.host, port=self.port, login=login)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        # Closing the sockets ends every handler's read (cancelling them would trip
        # asyncio's stream callback).
        self._apply(self.core.shutdown())
        await self._handlers.wait(timeout=5)
        await self._server.wait_closed()
        self._server = None

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _run_timer(self) -> None:
        """Wills whose delay ran out, sessions that expired: when the core says."""
        while True:
            deadline = self.core.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._now())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for: see test_cancellation_rules
                    await self._wake.wait()
            self._wake.clear()
            self._apply(self.core.tick(self._now()), wake=False)

    def _apply(self, actions: list[Action], *, wake: bool = True) -> None:
        for action in actions:
            if isinstance(action, Close) and wake:
                self._wake.set()  # a connection ended: a will delay or a session expiry may run
            writer = self._writers.get(action.connection)
            if writer is None:
                continue
            if isinstance(action, Close):
                writer.close()  # what was written before goes out first
                continue
            transport = writer.transport
            if transport.is_closing():
                continue
            if transport.get_write_buffer_size() > MAX_UNSENT:
                log.warning("mqtt_subscriber_too_slow", connection=action.connection)
                transport.abort()  # its handler then reports the loss to the core
                continue
            writer.write(action.data)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        core = self.core
        conn = core.open()
        self._writers[conn] = writer
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        reason = "connection closed"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                while not core.established(conn):
                    data = await reader.read(65536)
                    if not data:
                        return
                    self._apply(core.receive(conn, data, self._now()))
                    if conn not in core.connections or writer.is_closing():
                        return
            while conn in core.connections and not writer.is_closing():
                await writer.drain()
                try:
                    async with asyncio.timeout(core.keepalive(conn)):
                        data = await reader.read(65536)
                except TimeoutError:
                    reason = "keep alive timed out"
                    return
                if not data:
                    return
                self._apply(core.receive(conn, data, self._now()))
        except TimeoutError:
            reason = "no CONNECT in time"
        except (ConnectionError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        finally:
            self._apply(core.lost(conn, self._now(), reason))
            core.connections.pop(conn, None)
            self._writers.pop(conn, None)
            writer.close()
            # A client that reads nothing would hold the close (and the broker's stop) forever.
            try:
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
            except (ConnectionError, OSError, TimeoutError):
                writer.transport.abort()
