"""The `skyrelay` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from gateway import __version__, log
from gateway.config import ConfigError, load, unknown_environment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyrelay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"skyrelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--ws-port", type=int, help="WCS WebSocket API port (default 8080)")
    serve.add_argument("--http-port", type=int, help="HTTP port: static files, /healthz (default 8081)")
    serve.add_argument("--rtmp-port", type=int, help="RTMP ingest port (default 1935; 0: off)")
    serve.add_argument(
        "--rtsp-port", type=int, help="RTSP server port: play and publish (default 8554; 0: off)"
    )
    serve.add_argument("--mqtt", help="MQTT broker of the DJI docks: mqtt[s]://user:pass@host:port")
    serve.add_argument("--mqtt-ca-file", help="CA certificates to check an mqtts:// broker with")
    serve.add_argument(
        "--mqtt-broker", help="without --mqtt: embedded MQTT broker HOST:PORT (default 127.0.0.1:1883) or off"
    )
    _mqtt_broker_login(serve)
    serve.add_argument(
        "--mqtt-protocol", choices=["5", "3.1.1"], help="MQTT version of skyrelay's own clients (default 5)"
    )
    serve.add_argument("--live-linger", type=float, help="seconds a drone push outlives its last viewer")
    serve.add_argument(
        "--live-url-type", choices=["rtmp", "whip", "rtsp"], help="how drones push (default rtmp)"
    )
    serve.add_argument(
        "--live-url-types", help="per dock or remote controller: SN=rtmp|whip|rtsp, comma-separated"
    )
    serve.add_argument(
        "--device-state-file", help="where the DJI devices learned are kept (default state/devices.json; off)"
    )
    serve.add_argument("--auth-hook-url", help="WCS REST hooks backend: connect/publishStream/playStream")
    serve.add_argument("--alias", action="append", dest="aliases", help="ALIAS=STREAM_NAME (repeatable)")
    serve.add_argument("--public-ip", help="address to announce in ICE candidates (1:1 NAT)")
    serve.add_argument(
        "--webrtc-udp-port",
        type=int,
        help="one UDP port for all WebRTC media (default 8189; 0: one per session)",
    )
    serve.add_argument("--webrtc-tcp-port", type=int, help="ICE-TCP port for WebRTC (default 8189; 0: off)")
    serve.add_argument(
        "--ice-address",
        action="append",
        dest="ice_addresses",
        help="local address for ICE host candidates (repeatable; default: all non-loopback)",
    )
    serve.add_argument(
        "--stun-server",
        action="append",
        dest="stun_servers",
        help="STUN server host:port (repeatable; default none)",
    )
    serve.add_argument("--max-frame-bytes", type=int, help="largest WebSocket frame accepted")
    serve.add_argument(
        "--max-connections-per-ip", type=int, help="open connections per address on each TCP port (256)"
    )
    serve.add_argument("--workers", type=int, help="worker processes (default 1; 0: one per core)")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument("--log-format", choices=["auto", "json", "console"])

    demo = sub.add_parser(
        "demo", help="the gateway, its embedded MQTT broker and a simulated DJI dock, ready to watch"
    )
    demo.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    demo.add_argument("--ws-port", type=int, help="WCS WebSocket API port (default 8080)")
    demo.add_argument("--http-port", type=int, help="HTTP port (default 8081)")
    demo.add_argument("--rtmp-port", type=int, help="RTMP ingest port (default 1935)")
    demo.add_argument("--rtsp-port", type=int, help="RTSP server port (default 8554)")
    demo.add_argument("--mqtt-broker", help="embedded MQTT broker HOST:PORT (default 127.0.0.1:1883)")
    demo.add_argument("--webrtc-udp-port", type=int, help="UDP port for all WebRTC media (default 8189)")
    demo.add_argument("--webrtc-tcp-port", type=int, help="ICE-TCP port for WebRTC (default 8189; 0: off)")
    _mqtt_broker_login(demo)
    demo.add_argument(
        "--ice-address", action="append", dest="ice_addresses", help="local address for ICE candidates"
    )

    token = sub.add_parser("token", help="mint an access token (HMAC with auth_secret)")
    token.add_argument("--name", required=True, help='the stream ("*": any)')
    token.add_argument("--action", choices=["connect", "publish", "play"], required=True)
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds it is valid (3600)")
    token.add_argument("--config", type=Path, help="TOML configuration file with auth_secret")

    worker = sub.add_parser("_worker")  # started by `serve --workers N`, not by people
    worker.add_argument("--control-fd", type=int, required=True)
    sim = sub.add_parser("dock-sim", help="simulate a DJI dock: MQTT Cloud API and an RTMP push")
    sim.add_argument("--mqtt", required=True, help="broker URL: mqtt[s]://user:pass@host:port")
    sim.add_argument("--mqtt-ca-file", help="CA certificates to check an mqtts:// broker with")
    sim.add_argument("--mqtt-protocol", choices=["5", "3.1.1"], default="5", help="MQTT version (default 5)")
    sim.add_argument("--gateway-sn", default="SIMDOCK0000001", help="the dock's serial number")
    sim.add_argument("--aircraft-sn", default="SIMAIRCRAFT0001", help="the aircraft's serial number")
    sim.add_argument("--fail-first", type=int, default=0, help="fail this many live_start_push")
    sim.add_argument("--fail-code", type=int, default=613006, help="DJI code for those failures")
    sim.add_argument("--reply-delay", type=float, default=0.0, help="seconds before each reply")
    sim.add_argument("--drop-after", type=float, default=0.0, help="drop each push after this long")
    sim.add_argument("--drop-for", type=float, default=0.0, help="... for this many seconds")
    sim.add_argument("--offline-after", type=float, default=0.0, help="go offline after this long")
    sim.add_argument("--offline-for", type=float, default=0.0, help="... for this long (0: for good)")
    sim.add_argument("--osd-rate", type=float, default=5.0, help="aircraft osd messages a second (default 5)")
    return parser


def _mqtt_broker_login(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mqtt-broker-user", help="user name the embedded MQTT broker requires")
    parser.add_argument("--mqtt-broker-password", help="... and its password")
    parser.add_argument("--mqtt-broker-password-file", help="... or a file holding the password")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        flags: dict[str, Any] = {
            k: v for k, v in vars(args).items() if k not in ("command", "config") and v is not None
        }
        try:
            config = load(flags, config_file=args.config)
        except ConfigError as exc:
            print(f"skyrelay: {exc}", file=sys.stderr)
            return 2
        log.configure(config.log_level, config.log_format)
        ignored = unknown_environment(os.environ)
        if ignored:
            log.get_logger(__name__).warning("unknown_environment_variables", names=ignored)
        if config.worker_count > 1:
            from gateway.cluster.supervisor import Supervisor

            return asyncio.run(_serve(Supervisor(config, config.worker_count)))
        from gateway.app import Gateway

        return asyncio.run(_serve(Gateway(config)))
    if args.command == "_worker":
        from gateway.cluster.supervisor import run_worker

        raise_open_files_limit()
        return asyncio.run(run_worker(args.control_fd))
    if args.command == "dock-sim":
        return _dock_sim(args)
    if args.command == "token":
        return _token(args)
    if args.command == "demo":
        return _demo(args)
    return 2


def _token(args: argparse.Namespace) -> int:
    from gateway.access import Action, mint_token

    try:
        config = load({}, config_file=args.config)
    except ConfigError as exc:
        print(f"skyrelay: {exc}", file=sys.stderr)
        return 2
    if not config.auth_secret:
        print("skyrelay: no auth_secret (SKYRELAY_AUTH_SECRET, or in --config)", file=sys.stderr)
        return 2
    print(mint_token(config.auth_secret, args.name, Action(args.action), args.ttl))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.app import Gateway, own_broker_address
    from gateway.dji.dock_sim import DockSimulator, run_forever

    flags = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        config = load({"live_linger": 5.0, **flags}, environ={})
    except ConfigError as exc:
        print(f"skyrelay: {exc}", file=sys.stderr)
        return 2
    log.configure("warning", "auto")
    address = own_broker_address(config)
    assert address is not None  # the demo always runs the embedded broker
    simulator = DockSimulator(address, _simulator_clip())
    page = f"http://localhost:{config.http_port}/"
    if config.ws_port != 8080:
        page += f"?ws=ws://localhost:{config.ws_port}"
    print(f"skyrelay demo: open {page} and click a drone camera ({simulator.videos[0]}).", flush=True)

    async def run() -> int:
        sim = asyncio.ensure_future(run_forever(simulator))
        try:
            return await _serve(Gateway(config))
        finally:
            sim.cancel()
            await asyncio.gather(sim, return_exceptions=True)

    return asyncio.run(run())


def _simulator_clip() -> Path:
    from gateway.media.synthetic import make_h264_clip

    cache = Path.home() / ".cache" / "skyrelay"
    cache.mkdir(parents=True, exist_ok=True)
    return make_h264_clip(cache, width=1280, height=720, fps=30, seconds=10, bitrate=2_000_000, gop=30)


def _dock_sim(args: argparse.Namespace) -> int:
    from gateway.dji.dock_sim import DockBehaviour, DockSimulator, run_forever
    from gateway.mqtt_link import BrokerAddress

    log.configure("info", "auto")
    try:
        broker = BrokerAddress.parse(args.mqtt, args.mqtt_ca_file, protocol=args.mqtt_protocol)
    except ValueError as exc:
        print(f"skyrelay: {exc}", file=sys.stderr)
        return 2
    clip = _simulator_clip()
    behaviour = DockBehaviour(
        args.fail_first,
        args.fail_code,
        args.reply_delay,
        drop_after=args.drop_after,
        drop_for=args.drop_for,
        offline_after=args.offline_after,
        offline_for=args.offline_for,
        osd_rate=args.osd_rate,
    )
    simulator = DockSimulator(broker, clip, args.gateway_sn, args.aircraft_sn, behaviour)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_forever(simulator))
    return 0


def raise_open_files_limit() -> None:
    """Every viewer, TCP connection and file takes a descriptor, and Debian's default soft
    limit is 1024: raise it to the hard limit, as servers do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _serve(gateway: Any) -> int:
    raise_open_files_limit()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from gateway.app import StartError
    from gateway.cluster.supervisor import ListenError, WorkersFailed
    from gateway.heap import freeze_startup
    from gateway.media.webrtc.icemux import IceMuxError

    try:
        # A part that fails to start has stopped those started before it (nothing listens).
        await gateway.start()
        freeze_startup()
        await stop.wait()
    except (StartError, IceMuxError, ListenError, WorkersFailed) as exc:
        print(f"skyrelay: {exc}", file=sys.stderr)
        return 1
    finally:
        await gateway.stop()
    return 0
