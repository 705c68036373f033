"""The MQTT link every part of skyrelay uses (the DJI bridge, the SD view, the demo's dock):
where the broker is, how a client connects to it, and how a link stays up (reconnecting
with capped exponential backoff)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt

from gateway.log import get_logger
from gateway.reconnect import ReconnectDelay

log = get_logger(__name__)

# paho leaves Nagle on: a command waited ~40 ms for the ACK of the previous small write
# (measured by scripts/bench/dji_latency). Commands are small and latency matters.
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

MAX_BACKOFF = 30.0


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    protocol: str = "5"  # MQTT 5.0, or "3.1.1" for brokers without it

    @classmethod
    def parse(cls, url: str, ca_file: str | None = None, protocol: str = "5") -> BrokerAddress:
        """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` (TLS)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"not an MQTT URL (mqtt://host:port or mqtts://host:port): {url!r}")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"bad port in MQTT URL {url!r}") from None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, port, username, password, tls, ca_file, protocol)

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.ca_file)

    def client(self, identifier: str) -> aiomqtt.Client:
        """An aiomqtt client of this broker, as every part of skyrelay connects to it."""
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V311 if self.protocol == "3.1.1" else aiomqtt.ProtocolVersion.V5,
            tls_context=self.tls_context(),
            keepalive=10,
            timeout=10,
            socket_options=NO_DELAY,
        )

    async def stay_connected(
        self,
        session: Callable[[], Awaitable[None]],
        connected: asyncio.Event,
        *,
        event: str,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        """Run ``session`` (which sets ``connected`` once subscribed) again and again until
        cancelled: capped exponential backoff between attempts, 1 s again after a link that
        worked. ``on_lost`` hears why a link that worked ended; ``event`` is the log event
        of a dropped link."""
        delays = ReconnectDelay(1.0, MAX_BACKOFF)
        while True:
            error = "session ended"
            try:
                await session()
            except aiomqtt.MqttError as exc:
                error = str(exc)
                log.warning(event, broker=self.host, error=error)
            finally:
                was_connected = connected.is_set()
                connected.clear()
            if was_connected:
                if on_lost is not None:
                    on_lost(error)
                delays.reset()
            await asyncio.sleep(delays.next())
