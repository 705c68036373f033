"""The composition root: builds the pieces from the configuration, starts and stops them."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.access import Action, OpenAccess, policy_from, query_authorizer
from gateway.broker.server import Broker
from gateway.cluster.forward import Forwarder
from gateway.cluster.machine import LocalFigures, MachineView, worker_health
from gateway.cluster.worker import WorkerLink, WorkerPlace
from gateway.config import Config, ConfigError, mqtt_broker_credentials, pairs
from gateway.dji.bridge import DjiBridge, MakePull, Streams
from gateway.dji.live import LiveSettings
from gateway.dji.protocol import UrlType
from gateway.dji.push_urls import default_push_url
from gateway.health import figures as health_figures
from gateway.http import metrics
from gateway.http.hls import hls_routes
from gateway.http.recordings import recording_routes
from gateway.http.rest_api import WcsRestApi
from gateway.http.server import HttpServer, stream_list
from gateway.http.telemetry import TelemetryHttp
from gateway.http.thumbnails import thumbnail_routes
from gateway.log import get_logger
from gateway.media.ingest_keys import IngestKeys
from gateway.media.recorders import Recorders
from gateway.media.recordings import RecordingStore
from gateway.media.registry import StreamRegistry
from gateway.media.servers.rtsp import RtspServer
from gateway.media.sinks.hls import HlsService
from gateway.media.sinks.rtmp_push import RtmpRepublishes
from gateway.media.sinks.whep import WhepEgress
from gateway.media.sources.rtmp import RtmpDeadlines, RtmpIngestServer
from gateway.media.sources.rtsp import RtspPull
from gateway.media.sources.rtsp_pulls import RtspPulls
from gateway.media.sources.whip import WhipIngest
from gateway.media.thumbnails import Thumbnails
from gateway.media.webrtc import floor
from gateway.media.webrtc.ice import configure_host_addresses, guard_consent_task
from gateway.media.webrtc.icemux import IceMux
from gateway.media.webrtc.peer import RtcSettings
from gateway.mqtt_link import BrokerAddress
from gateway.net_limits import ConnectionLimits
from gateway.sdview.service import SdViewService
from gateway.wcs.server import WcsServer
from gateway.wcs.session import SessionLimits

log = get_logger(__name__)


class StartError(Exception):
    """A part of the gateway could not start (its port taken, most often); the parts started
    before it have been stopped again."""


# A part as the gateway starts and stops it: its name for the error, its start (None: it
# only needs stopping) and its stop.
Part = tuple[str, Callable[[], Awaitable[None]] | None, Callable[[], Awaitable[None]]]


class Gateway:
    """Builds the parts from the configuration (media, outputs, DJI, HTTP), starts them in
    order and stops them in the reverse order."""

    def __init__(self, config: Config, place: WorkerPlace | None = None) -> None:
        """``place``: this gateway is one worker of several (`gateway.cluster`): it accepts on
        the sockets the control process bound and shares stream names with the others."""
        self.config = config
        self.place = place
        configure_host_addresses(config.ice_addresses)
        guard_consent_task()
        self.tls = tls_context(config)
        self.access = policy_from(config.auth_secret, config.auth_hook_url)
        self.registry = StreamRegistry(
            keyframe_interval=config.keyframe_request_interval, aliases=pairs(config.aliases)
        )
        self.ingest_keys = IngestKeys()
        self.cluster = WorkerLink(place, self.registry, self.ingest_keys) if place is not None else None
        self.connection_limits = ConnectionLimits(
            config.max_connections_per_ip, others=place.connection_counts() if place is not None else None
        )
        self._build_outputs()
        self._build_media()
        self._build_dji()
        self._build_http()
        self._running: contextlib.AsyncExitStack | None = None

    def _build_outputs(self) -> None:
        """What is made of streams besides viewers: recordings, thumbnails, HLS, RTMP
        republishing."""
        config = self.config
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

    def _build_media(self) -> None:
        """The protocols streams come in and go out by: WebRTC (WebSocket API, WHIP, WHEP),
        RTMP, RTSP (server and pulls)."""
        config, access = self.config, self.access
        authorize_play = None if isinstance(access, OpenAccess) else query_authorizer(access, Action.PLAY)
        self.ice_mux = IceMux(
            config.host,
            config.webrtc_udp_port,
            config.webrtc_tcp_port,
            config.ice_timeout,
            connection_limits=self.connection_limits,
        )
        settings = RtcSettings(
            ice_mux=self.ice_mux if self.ice_mux.enabled else None,
            stun_servers=config.stun_servers,
            public_ip=config.public_ip,
            ice_timeout=config.ice_timeout,
            viewer_queue_frames=config.viewer_queue_frames,
            fast_fanout=config.fast_fanout,
            fanout_floor=config.fanout_floor,
            fast_receive=config.fast_receive,
        )
        floor.want_gso(config.fanout_gso)
        floor.want_native(config.fanout_native)
        floor.want_threads(config.fanout_thread_count)
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
                authorize_connections=not isinstance(access, OpenAccess),
            ),
            access=access,
            record=self.recorders.start,
            tls=self.tls,
            snapshot=self.thumbnails.png,
            republish=self.republishes.startup,
            connection_limits=self.connection_limits,
            telemetry_rate=config.telemetry_rate,
            sock=self._listener("ws"),
        )
        self.rtmp = (
            RtmpIngestServer(
                self.registry,
                self.ingest_keys,
                host=config.host,
                port=config.rtmp_port,
                access=access,
                deadlines=RtmpDeadlines(config.rtmp_handshake_timeout, config.rtmp_publish_timeout),
                limits=self.connection_limits,
                sock=self._listener("rtmp"),
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
                authorize_publish=query_authorizer(access, Action.PUBLISH),
                authorize_play=authorize_play,
                viewer_queue_frames=config.viewer_queue_frames,
                connection_limits=self.connection_limits,
                sock=self._listener("rtsp"),
            )
            if config.rtsp_port
            else None
        )
        self.whip = WhipIngest(self.registry, self.ingest_keys, settings, access)
        self.rtsp_pulls = RtspPulls(self.registry)
        self.whep = WhepEgress(self.registry, settings, config.telemetry_rate)

    def _build_dji(self) -> None:
        """The embedded MQTT broker, the DJI bridge and the SD view, on the MQTT link. A
        worker has only its SD view: the machine's broker and bridge are the control
        process's."""
        config = self.config
        mqtt_address = own_broker_address(config)
        registry = self.registry
        self.broker: Broker | None = None
        self.dji: DjiBridge | None = None
        if self.place is None:
            self.broker = embedded_broker(config, self.connection_limits)
            self.dji = dji_bridge(
                config, registry, self.ingest_keys, lambda name, url: RtspPull(registry, name, url)
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

    def _build_http(self) -> None:
        """The HTTP server: static files, WHIP/WHEP, the REST API, HLS, recordings, metrics."""
        config = self.config
        rest_api = WcsRestApi(
            self.registry,
            self.wcs,
            self.rtsp_pulls,
            self.recorders,
            self.thumbnails,
            republishes=self.republishes,
        )
        self.telemetry_http = TelemetryHttp(self.registry, config.telemetry_rate, self.access)
        outputs = metrics.Outputs(
            self.thumbnails,
            self.hls,
            self.recorders,
            self.sdview,
            self.broker,
            self.connection_limits,
            self.telemetry_http,
        )

        def scrape() -> str:
            return metrics.render(self.registry, self.wcs, self.dji, self.rtsp_pulls, outputs, self.ice_mux)

        # One worker of several: the machine's figures, and requests passed to a stream's worker.
        self.machine = (
            MachineView(
                self.cluster,
                LocalFigures(
                    lambda: worker_health(self.health(), self.registry),
                    scrape,
                    lambda: stream_list(self.registry),
                    rest_api.entries,
                ),
            )
            if self.cluster is not None
            else None
        )
        if self.machine is not None:
            rest_api.machine = self.machine.rest_streams
        self.forwarder = Forwarder(self.cluster) if self.cluster is not None else None
        self.http = HttpServer(
            host=config.host,
            port=config.http_port,
            static_dir=config.static_dir,
            health=self.health,
            registry=self.registry,
            devices=self._devices(),
            whip=self.whip,
            whep=self.whep,
            access=self.access,
            api_token=config.api_token,
            tls=self.tls,
            connection_limits=self.connection_limits,
            sock=self._listener("http"),
            machine=self.machine,
            middlewares=[self.forwarder.middleware] if self.forwarder is not None else [],
            private_path=self.forwarder.path if self.forwarder is not None else None,
            routes=[
                *thumbnail_routes(self.thumbnails),
                *self.telemetry_http.routes(),
                *rest_api.routes(),
                *hls_routes(self.hls, self.access),
                *recording_routes(self.recordings),
                *metrics.metrics_routes(scrape, self.machine.metrics if self.machine else None),
            ],
        )

    def _parts(self) -> list[Part]:
        """Every part in start order (stopped in the reverse): the WebRTC ports first, so a
        busy one stops the start before anything listens (their start also runs
        aiortc_compat.check(), which logs the WebRTC fast paths this aiortc offers)."""
        parts: list[Part] = []
        if self.cluster is not None:
            # First: a worker knows the machine's stream names before it accepts anything.
            parts.append(("worker link", self.cluster.start, self.cluster.stop))
        parts += [
            ("WebRTC ports", self.ice_mux.start, self.ice_mux.stop),
            ("WebSocket API", self.wcs.start, self.wcs.stop),
            ("HTTP server", self.http.start, self.http.stop),
            ("telemetry streams", None, self.telemetry_http.stop),
            ("RTSP pulls", None, self.rtsp_pulls.stop),
            ("WHEP", None, self.whep.stop),
            ("recorders", self.recorders.start_retention, self.recorders.stop_all),
            ("HLS", None, self.hls.stop),
            ("WHIP", None, self.whip.stop),
        ]
        if self.rtsp is not None:
            parts.append(("RTSP server", self.rtsp.start, self.rtsp.stop))
        if self.rtmp is not None:
            parts.append(("RTMP ingest", self.rtmp.start, self.rtmp.stop))
        parts.append(("RTMP republishing", None, self.republishes.stop_all))
        if self.broker is not None:
            parts.append(("MQTT broker", self._start_broker, self._stop_broker))
        if self.dji is not None:
            parts.append(("DJI bridge", self.dji.start, self.dji.stop))
        if self.sdview is not None:
            parts.append(("SD view", self.sdview.start, self.sdview.stop))
        if self.cluster is not None:
            # Last: the control process counts this worker up (and down first when it stops).
            parts.append(("worker started", self.cluster.started, self.cluster.stopping))
        return parts

    def _devices(self) -> Callable[[], Awaitable[Any]] | None:
        """What /api/devices shows: this process's DJI bridge, or the control process's."""
        if self.cluster is not None:
            return self.cluster.devices
        dji = self.dji
        if dji is None:
            return None

        async def describe() -> Any:
            return dji.describe()

        return describe

    def _listener(self, name: str) -> socket.socket | None:
        """The control process's listening socket ``name`` for a worker; None: bind our own."""
        return self.place.listener(name) if self.place is not None else None

    async def start(self) -> None:
        """Start every part. When one fails, those already started are stopped and
        StartError says which part and why (IceMuxError for the WebRTC ports)."""
        async with contextlib.AsyncExitStack() as stack:
            for name, start, stop in self._parts():
                if start is not None:
                    try:
                        await start()
                    except OSError as exc:
                        log.error("gateway_start_failed", part=name, error=str(exc))
                        raise StartError(f"{name} could not start: {exc}") from exc
                stack.push_async_callback(stop)
            self._running = stack.pop_all()
        log.info("gateway_started", ws_port=self.config.ws_port, http_port=self.config.http_port)

    async def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            await running.aclose()
        log.info("gateway_stopped")

    async def _start_broker(self) -> None:
        assert self.broker is not None
        try:
            await self.broker.start()
        except OSError as exc:
            # Often another broker (a system Mosquitto) holds the port: the bridge simply
            # uses that one.
            log.warning("mqtt_broker_not_started", bind=self.config.mqtt_broker, error=str(exc))
            self.broker = None

    async def _stop_broker(self) -> None:
        if self.broker is not None:
            await self.broker.stop()

    def health(self) -> dict[str, Any]:
        return health_figures(
            self.registry,
            len(self.wcs.connections),
            self.ice_mux,
            {"dji": self.dji.mqtt if self.dji is not None else None, "sd_view": self.sdview},
        )


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


def dji_bridge(
    config: Config, streams: Streams, ingest_keys: IngestKeys, make_pull: MakePull
) -> DjiBridge | None:
    """The DJI bridge on skyrelay's own MQTT link (None without one): in the gateway's
    process, or with several workers in the control process."""
    mqtt_address = own_broker_address(config)
    if mqtt_address is None:
        return None
    return DjiBridge(
        streams,
        ingest_keys,
        mqtt_address,
        make_pull=make_pull,
        push_urls={
            UrlType.RTMP: config.rtmp_push_url or default_push_url(config, "rtmp"),
            UrlType.WHIP: config.whip_push_url or default_push_url(config, "whip"),
        },
        settings=LiveSettings(
            url_type=config.live_push_type,
            reply_timeout=config.live_reply_timeout,
            max_attempts=config.live_max_attempts,
            retry_backoff=config.live_retry_backoff,
            push_timeout=config.live_push_timeout,
            linger=config.live_linger,
        ),
        url_types=config.live_push_types,
        rtsp_port=config.live_rtsp_port,
        offline_after=config.device_offline_after,
        max_gateways=config.dji_max_gateways,
        max_devices_per_gateway=config.dji_max_devices_per_gateway,
        max_osd_rate=config.dji_max_osd_rate,
        state_file=config.device_state_path,
    )


def embedded_broker(config: Config, connection_limits: ConnectionLimits | None = None) -> Broker | None:
    """The embedded MQTT broker, unless an external one is configured or it is off. Bound
    beyond loopback, it must have a log-in (ConfigError otherwise)."""
    bind = config.mqtt_broker_bind
    if config.mqtt or bind is None:
        return None
    user, password = mqtt_broker_credentials(config) or (None, None)
    return Broker(*bind, username=user, password=password, connection_limits=connection_limits)


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
