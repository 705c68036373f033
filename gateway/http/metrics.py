"""``GET /metrics`` in the Prometheus text format (version 0.0.4): streams, viewers, bit
rates, ingest state, WebSocket sessions, MQTT link state (the DJI bridge's, the SD view's),
the embedded broker's clients and refusals, connections refused by the per-address limit,
and DJI command outcomes. Read from the live
objects at scrape time; nothing is kept here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.broker.server import Broker
from gateway.dji.bridge import DjiBridge
from gateway.dji.devices import OSD_RATE, TOO_MANY_DEVICES, TOO_MANY_GATEWAYS
from gateway.http.telemetry import TelemetryHttp
from gateway.media.recorders import Recorders
from gateway.media.registry import StreamRegistry
from gateway.media.sinks.hls import HlsService
from gateway.media.sources.rtsp_pulls import RtspPulls, redacted
from gateway.media.thumbnails import Thumbnails
from gateway.media.webrtc.icemux import IceMux
from gateway.net_limits import ConnectionLimits
from gateway.sdview.service import SdViewService
from gateway.telemetry.hub import TelemetryHub
from gateway.wcs.server import WcsServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Family:
    """One metric: its help, type and samples (labels, value)."""

    name: str
    kind: str  # gauge | counter
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            yield f"{self.name}{{{text}}} {value:g}" if text else f"{self.name} {value:g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class Outputs:
    """The outputs whose figures /metrics shows (each optional)."""

    thumbnails: Thumbnails | None = None
    hls: HlsService | None = None
    recorders: Recorders | None = None
    sdview: SdViewService | None = None
    broker: Broker | None = None  # the embedded MQTT broker
    connections: ConnectionLimits | None = None  # the per-address limit of the TCP ports
    telemetry: TelemetryHttp | None = None


def render(
    registry: StreamRegistry,
    wcs: WcsServer,
    dji: DjiBridge | None,
    rtsp: RtspPulls | None,
    outputs: Outputs | None = None,
    webrtc_ports: IceMux | None = None,
) -> str:
    families = [
        *_streams(registry),
        *_sessions(wcs),
        *(_webrtc_ports(webrtc_ports) if webrtc_ports is not None and webrtc_ports.enabled else []),
        *(_dji(dji) if dji is not None else []),
        *(_rtsp(rtsp) if rtsp is not None else []),
        *_outputs(outputs or Outputs()),
        *_telemetry(registry.telemetry, (outputs or Outputs()).telemetry),
    ]
    return "\n".join(line for family in families for line in family.lines()) + "\n"


def _streams(registry: StreamRegistry) -> list[Family]:
    count = Family("skyrelay_streams", "gauge", "Streams in the registry.")
    viewers = Family("skyrelay_stream_viewers", "gauge", "Subscribers (viewers, outputs) of a stream.")
    bitrate = Family("skyrelay_stream_video_bitrate_bits", "gauge", "Video bit/s, last second.")
    fps = Family("skyrelay_stream_video_fps", "gauge", "Video frames received over the last second.")
    source = Family("skyrelay_stream_source_connected", "gauge", "1 while the stream's source delivers.")
    frames = Family("skyrelay_stream_video_frames_total", "counter", "Video frames received.")
    requests = Family("skyrelay_stream_keyframe_requests_total", "counter", "Keyframes asked upstream.")
    # A mirror (another worker's stream relayed here) is counted by the worker holding it.
    streams = [stream for stream in registry.streams() if not registry.is_mirror(stream)]
    count.add(len(streams))
    for stream in streams:
        figures = stream.figures()
        labels = {"stream": redacted(stream.name), "ingest": stream.ingest}
        viewers.add(figures["viewers"], **labels)
        bitrate.add(figures["bit_rate"], **labels)
        fps.add(figures["fps"], **labels)
        source.add(1 if figures["source_connected"] else 0, **labels)
        frames.add(figures["frames"], **labels)
        requests.add(figures["keyframe_requests"], **labels)
    return [count, viewers, bitrate, fps, source, frames, requests]


def render_control(dji: DjiBridge | None, outputs: Outputs) -> str:
    """The series of the control process of several workers: its DJI bridge's and its
    outputs' (the embedded broker)."""
    families = [*(_dji(dji) if dji is not None else []), *_outputs(outputs)]
    return "".join(line + "\n" for family in families for line in family.lines())


def _sessions(wcs: WcsServer) -> list[Family]:
    connections = Family("skyrelay_websocket_connections", "gauge", "Open WCS WebSocket connections.")
    connections.add(len(wcs.connections))
    media = Family("skyrelay_media_sessions", "gauge", "Open WCS media sessions by kind.")
    sessions = wcs.media_sessions()
    for kind, published in (("publish", True), ("play", False)):
        media.add(sum(1 for _, desc in sessions if desc.published == published), kind=kind)
    return [connections, media]


def _webrtc_ports(mux: IceMux) -> list[Family]:
    sessions = Family("skyrelay_webrtc_port_sessions", "gauge", "ICE sessions on the shared WebRTC ports.")
    sessions.add(len(mux.sessions))
    tcp = Family("skyrelay_webrtc_tcp_connections", "gauge", "ICE-TCP connections by state.")
    tcp.add(len(mux.pending_links), state="pending")
    tcp.add(len(mux.bound_links), state="bound")
    dropped = Family(
        "skyrelay_webrtc_dropped_total", "counter", "Datagrams and TCP frames dropped on the WebRTC ports."
    )
    for (transport, reason), number in sorted(mux.dropped.items()):
        dropped.add(number, transport=transport, reason=reason)
    closed = Family("skyrelay_webrtc_tcp_closed_total", "counter", "ICE-TCP connections closed, by reason.")
    for reason, number in sorted(mux.tcp_closed.items()):
        closed.add(number, reason=reason)
    return [sessions, tcp, dropped, closed]


def _dji(dji: DjiBridge) -> list[Family]:
    link = Family("skyrelay_mqtt_connected", "gauge", "1 while the DJI bridge is connected to its broker.")
    link.add(1 if dji.mqtt.connected.is_set() else 0)
    gateways = Family("skyrelay_dji_gateways", "gauge", "Known DJI docks and remote controllers.")
    for online in (True, False):
        known = sum(1 for g in dji.devices.gateways.values() if g.online == online)
        gateways.add(known, state="online" if online else "offline")
    commands = Family("skyrelay_dji_commands_total", "counter", "DJI commands sent (sent=false: link down).")
    for (method, sent), number in sorted(dji.mqtt.commands.items()):
        commands.add(number, method=method, sent="true" if sent else "false")
    messages = Family("skyrelay_dji_messages_rejected_total", "counter", "Device messages not acted on.")
    messages.add(dji.mqtt.dropped_messages, reason="malformed")
    messages.add(dji.mqtt.failed_messages, reason="handler_error")
    for reason in (TOO_MANY_GATEWAYS, TOO_MANY_DEVICES, OSD_RATE):
        messages.add(dji.mqtt.limited[reason], reason=reason)
    # osd of a device no gateway announced: liveness only, its telemetry goes nowhere.
    messages.add(dji.devices.osd_unknown, reason="osd_unknown_device")
    replies = Family("skyrelay_dji_replies_total", "counter", "DJI services_reply by method and result code.")
    for (method, result), number in sorted(dji.replies.items()):
        replies.add(number, method=method, result=str(result))
    live = Family("skyrelay_dji_live_videos", "gauge", "DJI videos by on-demand phase.")
    phases: dict[str, int] = {}
    for controller in dji.controllers.values():
        phases[controller.phase.value] = phases.get(controller.phase.value, 0) + 1
    for phase, number in sorted(phases.items()):
        live.add(number, phase=phase)
    return [link, gateways, commands, messages, replies, live]


# A device's latest telemetry as gauges: the sample's gauges() key -> (metric, help).
DEVICE_GAUGES = {
    "battery_percent": ("skyrelay_device_battery_percent", "Battery of a device, percent (latest osd)."),
    "height_m": ("skyrelay_device_height_meters", "Height of an aircraft, metres (latest osd)."),
    "link_quality": ("skyrelay_device_link_quality", "Radio link quality of a device, 0-5 (latest osd)."),
}


def _telemetry(hub: TelemetryHub, sse: TelemetryHttp | None) -> list[Family]:
    samples = Family("skyrelay_telemetry_samples_total", "counter", "Telemetry samples from devices.")
    samples.add(hub.samples)
    delivered = Family(
        "skyrelay_telemetry_deliveries_total", "counter", "Telemetry messages to receivers (pre rate limit)."
    )
    delivered.add(hub.delivered)
    receivers = Family("skyrelay_telemetry_receivers", "gauge", "Receivers of telemetry.")
    receivers.add(hub.subscribers())
    families = [samples, delivered, receivers]
    if sse is not None:
        clients = Family("skyrelay_telemetry_sse_clients", "gauge", "Open telemetry SSE streams.")
        clients.add(sse.clients)
        families.append(clients)
    gauges = {key: Family(name, "gauge", text) for key, (name, text) in DEVICE_GAUGES.items()}
    for sn, sample in sorted(hub.devices().items()):
        for key, value in sample.gauges().items():
            family = gauges.get(key)
            if family is not None:
                family.add(value, sn=sn)
    return families + list(gauges.values())


def _rtsp(rtsp: RtspPulls) -> list[Family]:
    pulls = Family("skyrelay_rtsp_pulls", "gauge", "RTSP pulls by status.")
    statuses: dict[str, int] = {}
    for entry in rtsp.find_all():
        status = str(entry["status"])
        statuses[status] = statuses.get(status, 0) + 1
    for status, number in sorted(statuses.items()):
        pulls.add(number, status=status)
    return [pulls]


def _outputs(outputs: Outputs) -> list[Family]:
    families = []
    if outputs.thumbnails is not None:
        requests = Family("skyrelay_thumbnail_requests_total", "counter", "Thumbnail and snapshot requests.")
        requests.add(outputs.thumbnails.requests)
        decodes = Family("skyrelay_thumbnail_decodes_total", "counter", "Keyframes decoded for thumbnails.")
        decodes.add(outputs.thumbnails.decodes)
        families += [requests, decodes]
    if outputs.hls is not None:
        hls = Family("skyrelay_hls_streams", "gauge", "Streams being packaged for HLS.")
        hls.add(len(outputs.hls.packagers))
        families.append(hls)
    if outputs.recorders is not None:
        recording = Family("skyrelay_recordings_active", "gauge", "Streams being recorded.")
        recording.add(len(outputs.recorders.running))
        families.append(recording)
    if outputs.sdview is not None:
        link = Family(
            "skyrelay_sd_view_mqtt_connected", "gauge", "1 while the SD view is connected to its broker."
        )
        link.add(1 if outputs.sdview.connected.is_set() else 0)
        images = Family("skyrelay_sd_view_images_total", "counter", "SD view JPEGs published over MQTT.")
        images.add(outputs.sdview.published)
        families += [link, images]
    if outputs.broker is not None:
        core = outputs.broker.core
        clients = Family("skyrelay_mqtt_broker_clients", "gauge", "Clients connected to the embedded broker.")
        clients.add(sum(1 for s in core.sessions.values() if s.connection is not None))
        rejected = Family(
            "skyrelay_mqtt_broker_rejected_total",
            "counter",
            "Clients the embedded broker refused or disconnected, by reason.",
        )
        for reason, number in sorted(core.rejected.items()):
            rejected.add(number, reason=reason)
        families += [clients, rejected]
    if outputs.connections is not None:
        refused = Family(
            "skyrelay_connections_refused_total",
            "counter",
            "TCP connections closed at accept: their address held max_connections_per_ip, by port.",
        )
        for kind, number in sorted(outputs.connections.refused.items()):
            refused.add(number, port_kind=kind)
        families.append(refused)
    return families


def metrics_routes(
    scrape: Callable[[], str], machine: Callable[[], Awaitable[str]] | None = None
) -> list[web.RouteDef]:
    """``scrape``: this process's exposition; ``machine``: the whole machine's, when this
    process is one worker of several (`gateway.cluster.machine`)."""

    async def metrics(request: web.Request) -> web.Response:
        text = await machine() if machine is not None else scrape()
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    return [web.get("/metrics", metrics)]
