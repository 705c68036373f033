"""Gateway configuration: defaults < TOML file < SKYRELAY_* environment < command-line flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.dji.protocol import UrlType

STATIC_DIR = Path(__file__).resolve().parent / "static"  # package data: installed with the package


URL_TYPES = ("rtmp", "whip", "rtsp")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    ws_port: int = 8080
    http_port: int = 8081
    rtmp_port: int = 1935  # RTMP ingest; 0 turns it off
    # An RTMP connection must finish its handshake, then start publishing, this many seconds
    # after it was accepted, else it is closed; a publisher silent for rtmp_publish_timeout too.
    rtmp_handshake_timeout: float = 10.0
    rtmp_publish_timeout: float = 30.0
    # Connections one address may hold open on each TCP port (WebSocket, HTTP, RTMP, RTSP,
    # the embedded MQTT broker); more are closed at once and counted.
    max_connections_per_ip: int = 256
    # RTSP server: every stream at rtsp://host:port/{name}, and ANNOUNCE/RECORD publishing;
    # RTP over UDP from rtsp_udp_port (RTCP +1; 0: any free pair). 0 turns RTSP off.
    rtsp_port: int = 8554
    rtsp_udp_port: int = 0
    # DJI Cloud API bridge: the MQTT broker docks and remote controllers use (off if unset).
    mqtt: str | None = None
    mqtt_ca_file: str | None = None
    # Without `mqtt`, an embedded broker listens here for docks and the bridge ("off": none).
    mqtt_broker: str = "127.0.0.1:1883"
    # The log-in the embedded broker requires (its own clients use it too); without it, the
    # broker may only listen on loopback. The password inline or in a file.
    mqtt_broker_user: str | None = None
    mqtt_broker_password: str | None = None
    mqtt_broker_password_file: str | None = None
    # The MQTT version skyrelay's own clients speak: "5", or "3.1.1" for older brokers.
    mqtt_protocol: str = "5"
    # Where devices push RTMP (default rtmp://{public_ip or a local address}:{rtmp_port}/live).
    rtmp_push_url: str | None = None
    # Where devices push WHIP (url_type 4; default http://{same host as RTMP}:{http_port}/whip).
    whip_push_url: str | None = None
    # How devices push: rtmp, whip or rtsp (the device serves RTSP and the gateway pulls it),
    # and per gateway SN ("SN=whip" entries, or a TOML table).
    live_url_type: str = "rtmp"
    live_url_types: tuple[str, ...] = ()
    live_rtsp_port: int = 8554  # the port an RTSP-serving device is asked to listen on
    # The DJI devices and videos learned, kept across restarts ("off": not kept).
    device_state_file: str = "state/devices.json"
    live_linger: float = 30.0
    live_reply_timeout: float = 20.0
    live_max_attempts: int = 4
    live_retry_backoff: float = 2.0
    live_push_timeout: float = 20.0
    # Access control (off when neither is set): HMAC token secret, WCS REST hooks base URL.
    auth_secret: str | None = None
    auth_hook_url: str | None = None
    # Bearer token the REST API (/rest-api, /api) and /metrics require (none: open).
    api_token: str | None = None
    # HLS output (/hls/{name}/index.m3u8): segment target (s) and playlist length.
    hls_segment_target: float = 1.0
    hls_window: int = 6
    # DVR: where recordings go, file length, and retention by age (s) and total size.
    recordings_dir: Path = Path("recordings")
    record_segment_seconds: float = 60.0
    recordings_max_age: float = 7 * 86400.0
    recordings_max_bytes: int = 10 * 1024**3
    # Live thumbnails: one decode serves every request for this long (s).
    thumbnail_max_age: float = 1.0
    # Kerberos SD live view over MQTT (off without a hub key): device_id=stream entries.
    sd_view_hub_key: str | None = None
    sd_view_devices: tuple[str, ...] = ()
    sd_view_width: int = 480
    sd_view_max_payload_bytes: int = 128 * 1024
    # TLS for the WebSocket API (wss://) and HTTP (https://): PEM certificate chain and key.
    tls_cert: str | None = None
    tls_key: str | None = None
    # Other names for streams ("alias=stream name" entries, or a TOML table).
    aliases: tuple[str, ...] = ()
    device_offline_after: float = 60.0
    # Bounds of the DJI device registry: anyone who may publish on the broker can announce devices.
    dji_max_gateways: int = 1000
    dji_max_devices_per_gateway: int = 64
    # osd messages a second one DJI device may send; past it they are refused unparsed.
    dji_max_osd_rate: float = 50.0
    # Address announced in ICE candidates besides the host addresses (1:1 NAT, containers).
    public_ip: str | None = None
    # One UDP port for the media of every WebRTC session (0: each peer connection opens its
    # own sockets on random ports), and one TCP port for ICE-TCP (RFC 6544; 0: off).
    webrtc_udp_port: int = 8189
    webrtc_tcp_port: int = 8189
    # Local addresses to gather ICE host candidates on; empty means every non-loopback
    # interface (loopback only when there is no other).
    ice_addresses: tuple[str, ...] = ()
    # No STUN by default: the gateway usually has a routable or configured public address.
    stun_servers: tuple[str, ...] = ()
    static_dir: Path = STATIC_DIR
    max_frame_bytes: int = 1024 * 1024
    ping_interval: float = 5.0
    ping_probes: int = 10
    max_media_sessions: int = 16
    ice_timeout: float = 20.0
    viewer_queue_frames: int = 90  # a live viewer's (WebRTC, RTSP) video queue
    remux_queue_frames: int = 300  # HLS's and the recorder's: they may fall behind further
    keyframe_request_interval: float = 1.0
    fast_fanout: bool = True
    # With the fast fan-out: each viewer's access unit in one burst (libsrtp in place, one
    # sendmmsg or ICE-TCP write); false: per packet Session.protect and sendto.
    fanout_floor: bool = True
    # The floor sends runs of packets of one size (but a shorter last) as UDP GSO messages.
    fanout_gso: bool = True
    # The floor's bursts written by its C part (burst.c, built with the machine's C compiler
    # at first start); false, or no compiler: the same work in Python.
    fanout_native: bool = True
    # Threads writing one access unit to a stream's viewers with the C burst: 2 splits a batch
    # of 8 or more between the event loop's thread and a helper; 0: 2 when this process is the
    # only worker on a machine of 2 or more cores, else 1 (the workers use the cores).
    fanout_threads: int = 0
    # A publisher's SRTP packets handled as they arrive, synchronously (aiortc_compat's fast
    # receive path); false: through aiortc's receive task, packet by packet.
    fast_receive: bool = True
    # The most telemetry messages a player (WebSocket or data channel) or an SSE client gets
    # per second per stream; the newest sample wins. A player may ask for fewer.
    telemetry_rate: float = 10.0
    # Worker processes (0: one per core). With more than one, a control process holds the
    # ports, the MQTT broker and the stream names, and each worker its own WebRTC ports from
    # webrtc_udp_port/webrtc_tcp_port up (and RTSP UDP pairs from rtsp_udp_port up).
    workers: int = 0
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console

    # --- settings as the parts use them (parsed here once) ---------------------------------

    @property
    def mqtt_broker_bind(self) -> tuple[str, int] | None:
        """Where the embedded broker listens: `mqtt_broker` as (host, port), IPv6 without its
        brackets; None when it is "off". Raises ConfigError when it is neither."""
        if self.mqtt_broker == "off":
            return None
        host, _, port = self.mqtt_broker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError("setting 'mqtt_broker': HOST:PORT (for example 127.0.0.1:1883) or off")
        return host.strip("[]"), int(port)

    @property
    def device_state_path(self) -> Path | None:
        """The DJI device state file; None when it is "off" (or empty)."""
        return None if self.device_state_file in ("", "off") else Path(self.device_state_file)

    @property
    def live_push_type(self) -> UrlType:
        """How devices push by default (`live_url_type`)."""
        return UrlType[self.live_url_type.upper()]

    @property
    def live_push_types(self) -> dict[str, UrlType]:
        """How each gateway SN named in `live_url_types` pushes."""
        return {sn: UrlType[kind.upper()] for sn, kind in pairs(self.live_url_types).items()}

    @property
    def worker_count(self) -> int:
        """How many worker processes `workers` means on this machine (0: one per usable
        core, at most `MAX_WORKERS`)."""
        return self.workers or min(usable_cores(), MAX_WORKERS)

    @property
    def fanout_thread_count(self) -> int:
        """How many threads `fanout_threads` means in each worker on this machine."""
        if self.fanout_threads:
            return self.fanout_threads
        return 2 if self.worker_count == 1 and usable_cores() >= 2 else 1

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        values = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **_coerce_all(values))


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    if name not in _FIELDS:
        raise ConfigError(f"unknown setting {name!r}")
    default = getattr(Config(), name)
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("not a whole number")
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError("not a number")
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, Mapping):  # a TOML table of name = value pairs
                return tuple(f"{k}={v}" for k, v in value.items())
            return tuple(str(v) for v in value)
        if isinstance(default, Path):
            return Path(value)
        return None if value is None else str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {value!r}: {exc}") from exc


def _coerce_all(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _coerce(name, value) for name, value in values.items()}


def from_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    section = data.get("skyrelay", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: 'skyrelay' must be a table of settings")
    return {k.replace("-", "_"): v for k, v in section.items()}


ENV_PREFIX = "SKYRELAY_"


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from SKYRELAY_<NAME> variables. Other SKYRELAY_* variables are not settings
    (tools share the prefix): see `unknown_environment`."""
    found = {}
    for key, value in environ.items():
        name = key[len(ENV_PREFIX) :].lower()
        if key.startswith(ENV_PREFIX) and name in _FIELDS:
            found[name] = value
    return found


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """SKYRELAY_* variables that name no setting (likely typos), for a warning."""
    # Not settings but read by the gateway: the config file, and where the floor's C burst is
    # built (media/webrtc/native.py, read before any configuration is).
    known = {ENV_PREFIX + name.upper() for name in _FIELDS} | {"SKYRELAY_CONFIG", "SKYRELAY_NATIVE_DIR"}
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)


def load(
    flags: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    environ = os.environ if environ is None else environ
    config = Config()
    path = config_file or (Path(environ["SKYRELAY_CONFIG"]) if "SKYRELAY_CONFIG" in environ else None)
    if path is not None:
        config = config.with_overrides(from_toml(path))
    config = config.with_overrides(from_environment(environ))
    config = config.with_overrides(flags)
    validate(config)
    return config


def validate(config: Config) -> None:
    for name in (
        "ws_port",
        "http_port",
        "rtmp_port",
        "rtsp_port",
        "rtsp_udp_port",
        "live_rtsp_port",
        "webrtc_udp_port",
        "webrtc_tcp_port",
    ):
        port = getattr(config, name)
        if not 0 <= port <= 65535:
            raise ConfigError(f"setting {name!r}: port {port} out of range")
    if not 0 <= config.workers <= MAX_WORKERS:
        raise ConfigError(f"setting 'workers': from 0 (one per core) to {MAX_WORKERS}, not {config.workers}")
    if not 0 <= config.fanout_threads <= 2:
        threads = config.fanout_threads
        raise ConfigError(f"setting 'fanout_threads': 0 (by the machine), 1 or 2, not {threads}")
    last = config.worker_count - 1  # each worker's own ports come after the configured ones
    for name, step in (("webrtc_udp_port", 1), ("webrtc_tcp_port", 1), ("rtsp_udp_port", 2)):
        port = getattr(config, name)
        highest = port + step * last + step - 1
        if port and highest > 65535:
            raise ConfigError(f"setting {name!r}: {config.worker_count} workers need ports up to {highest}")
    if config.max_frame_bytes < 1024:
        raise ConfigError("setting 'max_frame_bytes': must be at least 1024")
    if config.mqtt is not None and not config.mqtt.startswith(("mqtt://", "mqtts://")):
        raise ConfigError("setting 'mqtt': an mqtt:// or mqtts:// URL")
    config.mqtt_broker_bind  # noqa: B018 (raises ConfigError when malformed)
    mqtt_broker_credentials(config)
    if config.mqtt_protocol not in MQTT_PROTOCOLS:
        raise ConfigError(f"setting 'mqtt_protocol': one of {', '.join(MQTT_PROTOCOLS)}")
    for name in (
        "ping_interval",
        "ice_timeout",
        "keyframe_request_interval",
        "live_linger",
        "live_reply_timeout",
        "live_retry_backoff",
        "live_push_timeout",
        "device_offline_after",
        "hls_segment_target",
        "record_segment_seconds",
        "recordings_max_age",
        "thumbnail_max_age",
        "rtmp_handshake_timeout",
        "rtmp_publish_timeout",
    ):
        value = getattr(config, name)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"setting {name!r}: must be a positive number of seconds, not {value}")
    for name in ("live_url_types", "aliases", "sd_view_devices"):
        for entry in getattr(config, name):
            key, sep, value = entry.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ConfigError(f"setting {name!r}: entries are NAME=VALUE, not {entry!r}")
    if not math.isfinite(config.dji_max_osd_rate) or config.dji_max_osd_rate <= 0:
        raise ConfigError(
            f"setting 'dji_max_osd_rate': must be a positive rate (Hz), not {config.dji_max_osd_rate}"
        )
    for url_type in (config.live_url_type, *pairs(config.live_url_types).values()):
        if url_type not in URL_TYPES:
            raise ConfigError(f"setting 'live_url_type(s)': one of {', '.join(URL_TYPES)}, not {url_type!r}")
    for name in (
        "ping_probes",
        "max_media_sessions",
        "viewer_queue_frames",
        "remux_queue_frames",
        "live_max_attempts",
        "hls_window",
        "sd_view_max_payload_bytes",
        "recordings_max_bytes",
        "dji_max_gateways",
        "dji_max_devices_per_gateway",
        "max_connections_per_ip",
    ):
        if getattr(config, name) < 1:
            raise ConfigError(f"setting {name!r}: must be at least 1")
    if not math.isfinite(config.telemetry_rate) or not 0 < config.telemetry_rate <= 1000:
        rate = config.telemetry_rate
        raise ConfigError(f"setting 'telemetry_rate': messages per second above 0, at most 1000, not {rate}")
    if not 16 <= config.sd_view_width <= 3840:
        raise ConfigError("setting 'sd_view_width': from 16 to 3840 pixels")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("settings 'tls_cert' and 'tls_key': give both or neither")
    if config.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError("setting 'log_level': one of debug, info, warning, error, critical")
    if config.log_format not in ("auto", "json", "console"):
        raise ConfigError("setting 'log_format': one of auto, json, console")


MQTT_PROTOCOLS = ("5", "3.1.1")
MAX_WORKERS = 64


def mqtt_broker_credentials(config: Config) -> tuple[str, str] | None:
    """The embedded broker's (user, password), the password read from its file if so given;
    None when it needs no log-in, which only a loopback-bound broker may do."""
    bind = config.mqtt_broker_bind
    if config.mqtt or bind is None:
        return None
    password = config.mqtt_broker_password
    if config.mqtt_broker_password_file:
        if password is not None:
            raise ConfigError("settings 'mqtt_broker_password' and 'mqtt_broker_password_file': give one")
        try:
            password = Path(config.mqtt_broker_password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"setting 'mqtt_broker_password_file': cannot read it: {exc}") from None
    if config.mqtt_broker_user is None:
        if password is not None:
            raise ConfigError("setting 'mqtt_broker_password' without 'mqtt_broker_user'")
        host = bind[0]
        if host != "localhost" and not _loopback(host):
            raise ConfigError(
                f"setting 'mqtt_broker': the embedded broker on {host} would let anyone on the network"
                " in; set 'mqtt_broker_user' and 'mqtt_broker_password' (or"
                " 'mqtt_broker_password_file'), or bind it to 127.0.0.1"
            )
        return None
    if not password:
        raise ConfigError(
            "setting 'mqtt_broker_user' needs 'mqtt_broker_password' or 'mqtt_broker_password_file'"
        )
    return config.mqtt_broker_user, password


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pairs(entries: tuple[str, ...]) -> dict[str, str]:
    """``("a=b", ...)`` as ``{"a": "b", ...}`` (for validated NAME=VALUE settings)."""
    return {k.strip(): v.strip() for k, _, v in (e.partition("=") for e in entries)}


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: those it may run on, fewer when its cgroup's CPU
    quota allows less (a container started with ``--cpus 2`` on a 64-core host runs on 64
    but may use 2)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota = cores_of_quota(cpu_max.read_text())
    except OSError:
        return cores
    return min(cores, quota) if quota is not None else cores


def cores_of_quota(cpu_max: str) -> int | None:
    """Whole cores a cgroup v2 ``cpu.max`` ("QUOTA PERIOD", "max PERIOD": none) allows,
    rounded up and at least one; None without a quota or when it cannot be read."""
    words = cpu_max.split()
    if len(words) != 2 or words[0] == "max":
        return None
    try:
        quota, period = int(words[0]), int(words[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, -(-quota // period))


__all__ = ["Config", "ConfigError", "load", "pairs", "usable_cores"]
