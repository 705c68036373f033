"""The composition root: builds the pieces from the configuration, starts and stops them."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.access import AccessRequest, Action, OpenAccess, policy_from
from gateway.broker.server import Broker
from gateway.config import Config, ConfigError, mqtt_broker_credentials, pairs
from gateway.dji.bridge import DjiBridge
from gateway.dji.live import LiveSettings
from gateway.dji.protocol import UrlType
from gateway.http import metrics
from gateway.http.hls import hls_routes
from gateway.http.recordings import recording_routes
from gateway.http.rest_api import WcsRestApi
from gateway.http.server import HttpServer
from gateway.http.thumbnails import thumbnail_routes
from gateway.log import get_logger
from gateway.media.ingest_keys import IngestKeys
from gateway.media.recorders import Recorders
from gateway.media.recordings import RecordingStore
from gateway.media.registry import StreamRegistry
from gateway.media.sinks.hls import HlsService
from gateway.media.sinks.rtmp_push import RtmpRepublishes
from gateway.media.sinks.rtsp import RtspServer
from gateway.media.sinks.whep import WhepEgress
from gateway.media.sources.rtmp import RtmpIngestServer
from gateway.media.sources.rtsp_pulls import RtspPulls
from gateway.media.sources.whip import WhipIngest
from gateway.media.thumbnails import Thumbnails
from gateway.media.webrtc.ice import configure_host_addresses, guard_consent_task
from gateway.media.webrtc.icemux import IceMux
from gateway.media.webrtc.peer import Peer, RtcSettings
from gateway.mqtt_link import BrokerAddress
from gateway.sdview.service import SdViewService
from gateway.wcs.server import WcsServer
from gateway.wcs.session import SessionLimits

log = get_logger(__name__)


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        configure_host_addresses(config.ice_addresses)
        guard_consent_task()
        self.tls = tls_context(config)
        self.access = policy_from(config.auth_secret, config.auth_hook_url)
        self.registry = StreamRegistry(
            keyframe_interval=config.keyframe_request_interval, aliases=pairs(config.aliases)
        )
        self.ice_mux = IceMux(config.host, config.webrtc_udp_port, config.webrtc_tcp_port, config.ice_timeout)
        settings = RtcSettings(
            ice_mux=self.ice_mux if self.ice_mux.enabled else None,
            stun_servers=config.stun_servers,
            public_ip=config.public_ip,
            ice_timeout=config.ice_timeout,
            viewer_queue_frames=config.viewer_queue_frames,
            fast_fanout=config.fast_fanout,
        )
        self.recordings = RecordingStore(
            config.recordings_dir,
            max_age_s=config.recordings_max_age,
            max_total_bytes=config.recordings_max_bytes,
        )
        self.recorders = Recorders(
            self.registry,
            self.recordings,
            segment_seconds=config.record_segment_seconds,
            queue_frames=config.remux_queue_frames,
        )
        self.thumbnails = Thumbnails(self.registry, max_age=config.thumbnail_max_age)
        self.hls = HlsService(
            self.registry,
            segment_target=config.hls_segment_target,
            window=config.hls_window,
            queue_frames=config.remux_queue_frames,
        )
        self.republishes = RtmpRepublishes(self.registry)
        self.wcs = WcsServer(
            self.registry,
            settings,
            host=config.host,
            port=config.ws_port,
            max_frame_bytes=config.max_frame_bytes,
            ping_interval=config.ping_interval,
            limits=SessionLimits(
                config.max_media_sessions,
                config.ping_probes,
                authorize_connections=not isinstance(self.access, OpenAccess),
            ),
            access=self.access,
            record=self.recorders.start,
            tls=self.tls,
            snapshot=self.thumbnails.png,
            republish=self.republishes.startup,
        )
        self.ingest_keys = IngestKeys()
        self.rtmp = (
            RtmpIngestServer(
                self.registry, self.ingest_keys, host=config.host, port=config.rtmp_port, access=self.access
            )
            if config.rtmp_port
            else None
        )
        self.rtsp = (
            RtspServer(
                self.registry,
                config.host,
                config.rtsp_port,
                rtp_port=config.rtsp_udp_port,
                authorize_publish=self._authorize_rtsp_publish,
                authorize_play=None if isinstance(self.access, OpenAccess) else self._authorize_rtsp_play,
                viewer_queue_frames=config.viewer_queue_frames,
            )
            if config.rtsp_port
            else None
        )
        self.whip = WhipIngest(self.registry, self.ingest_keys, settings, self.access)
        self.rtsp_pulls = RtspPulls(self.registry)
        self.whep = WhepEgress(self.registry, settings)
        self.broker = embedded_broker(config)
        mqtt_address = own_broker_address(config)
        self.dji = (
            DjiBridge(
                self.registry,
                self.ingest_keys,
                mqtt_address,
                push_urls={
                    UrlType.RTMP: config.rtmp_push_url or default_push_url(config, "rtmp"),
                    UrlType.WHIP: config.whip_push_url or default_push_url(config, "whip"),
                },
                settings=LiveSettings(
                    url_type=UrlType[config.live_url_type.upper()],
                    reply_timeout=config.live_reply_timeout,
                    max_attempts=config.live_max_attempts,
                    retry_backoff=config.live_retry_backoff,
                    push_timeout=config.live_push_timeout,
                    linger=config.live_linger,
                ),
                url_types={sn: UrlType[kind.upper()] for sn, kind in pairs(config.live_url_types).items()},
                rtsp_port=config.live_rtsp_port,
                offline_after=config.device_offline_after,
                state_file=None
                if config.device_state_file in ("", "off")
                else Path(config.device_state_file),
            )
            if mqtt_address
            else None
        )
        self.sdview = (
            SdViewService(
                self.registry,
                self.thumbnails,
                mqtt_address,
                hub_key=config.sd_view_hub_key,
                devices=pairs(config.sd_view_devices),
                width=config.sd_view_width,
                max_payload_bytes=config.sd_view_max_payload_bytes,
            )
            if config.sd_view_hub_key and mqtt_address
            else None
        )
        self.http = HttpServer(
            host=config.host,
            port=config.http_port,
            static_dir=config.static_dir,
            health=self.health,
            registry=self.registry,
            devices=self.dji.describe if self.dji is not None else None,
            whip=self.whip,
            whep=self.whep,
            access=self.access,
            api_token=config.api_token,
            tls=self.tls,
            routes=[
                *thumbnail_routes(self.thumbnails),
                *WcsRestApi(
                    self.registry,
                    self.wcs,
                    self.rtsp_pulls,
                    self.recorders,
                    self.thumbnails,
                    republishes=self.republishes,
                ).routes(),
                *hls_routes(self.hls, self.access),
                *recording_routes(self.recordings),
                *metrics.metrics_routes(
                    lambda: metrics.render(
                        self.registry,
                        self.wcs,
                        self.dji,
                        self.rtsp_pulls,
                        metrics.Outputs(self.thumbnails, self.hls, self.recorders, self.sdview, self.broker),
                        self.ice_mux,
                    )
                ),
            ],
        )

    async def start(self) -> None:
        await self.ice_mux.start()  # first: a busy WebRTC port stops the start before anything listens
        await self.wcs.start()
        await self.http.start()
        if self.rtmp is not None:
            await self.rtmp.start()
        if self.rtsp is not None:
            await self.rtsp.start()
        if self.broker is not None:
            try:
                await self.broker.start()
            except OSError as exc:
                # Often another broker (a system Mosquitto) holds the port: the bridge
                # simply uses that one.
                log.warning("mqtt_broker_not_started", bind=self.config.mqtt_broker, error=str(exc))
                self.broker = None
        if self.dji is not None:
            await self.dji.start()
        if self.sdview is not None:
            await self.sdview.start()
        await self.recorders.start_retention()
        log.info("gateway_started", ws_port=self.config.ws_port, http_port=self.config.http_port)

    async def stop(self) -> None:
        if self.sdview is not None:
            await self.sdview.stop()
        if self.dji is not None:
            await self.dji.stop()
        if self.broker is not None:
            await self.broker.stop()
        await self.republishes.stop_all()
        if self.rtmp is not None:
            await self.rtmp.stop()
        if self.rtsp is not None:
            await self.rtsp.stop()
        await self.whip.stop()
        await self.hls.stop()
        await self.recorders.stop_all()
        await self.whep.stop()
        await self.rtsp_pulls.stop()
        await self.http.stop()
        await self.wcs.stop()
        await self.ice_mux.stop()
        log.info("gateway_stopped")

    async def _authorize_rtsp_publish(self, name: str, query: str) -> str | None:
        """ANNOUNCE of ``name`` on the RTSP port: allowed by the access policy (a publish
        token in ``?token=``). A device camera's name is refused by the registry's claim."""
        token = urllib.parse.parse_qs(query).get("token", [None])[0]
        return await self.access.check(AccessRequest(Action.PUBLISH, name, token))

    async def _authorize_rtsp_play(self, name: str, query: str) -> str | None:
        token = urllib.parse.parse_qs(query).get("token", [None])[0]
        return await self.access.check(AccessRequest(Action.PLAY, name, token))

    def health(self) -> dict[str, Any]:
        tasks = asyncio.all_tasks()
        return {
            "streams": len(self.registry),
            "sessions": len(self.wcs.connections),
            "peer_connections": Peer.open_count,
            "tasks": len(tasks),
            # What the tasks run, by coroutine: a leak shows what leaked.
            "task_kinds": dict(Counter(_coroutine_name(task) for task in tasks)),
            "threads": threading.active_count(),
            # Each MQTT link: up or not (the broker may be down; the link keeps trying).
            "mqtt_links": {
                name: service.connected.is_set()
                for name, service in (("dji", self.dji and self.dji.mqtt), ("sd_view", self.sdview))
                if service
            },
            "fds": len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1,
            "webrtc_ports": self.ice_mux.figures(),
        }


def _coroutine_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return str(getattr(coro, "__qualname__", type(coro).__name__))


def default_push_url(config: Config, kind: str) -> str:
    """The RTMP or WHIP URL prefix devices push to, at the public address, else the first
    ICE address, else the listening address if it is one, else this host's first
    non-loopback address."""
    listening = config.host if config.host not in ("0.0.0.0", "::", "") else None
    host = config.public_ip or next(iter(config.ice_addresses), None) or listening
    if host is None:
        import aioice.ice

        host = next(iter(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)), "127.0.0.1")
    if kind == "whip":
        return f"http://{host}:{config.http_port}/whip"
    return f"rtmp://{host}:{config.rtmp_port}/live"


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server TLS context of wss:// and https://, if a certificate is configured."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"settings 'tls_cert'/'tls_key': cannot load them: {exc}") from None
    return context


def embedded_broker(config: Config) -> Broker | None:
    """The embedded MQTT broker, unless an external one is configured or it is off. Bound
    beyond loopback, it must have a log-in (ConfigError otherwise)."""
    bind = config.mqtt_broker_bind
    if config.mqtt or bind is None:
        return None
    user, password = mqtt_broker_credentials(config) or (None, None)
    return Broker(*bind, username=user, password=password)


def own_broker_address(config: Config) -> BrokerAddress | None:
    """Where skyrelay's own MQTT clients (DJI bridge, SD view, the demo's dock) connect: the
    `mqtt` broker, or the embedded one with its log-in; None when there is neither."""
    if config.mqtt:
        return BrokerAddress.parse(config.mqtt, config.mqtt_ca_file, protocol=config.mqtt_protocol)
    bind = config.mqtt_broker_bind
    if bind is None:
        return None
    host, port = bind
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # the wildcard: here
    user, password = mqtt_broker_credentials(config) or (None, None)
    return BrokerAddress(host, port, user, password, protocol=config.mqtt_protocol)
