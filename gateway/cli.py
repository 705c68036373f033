"""The `skyrelay` command."""

from __future__ import annotations

import argparse
import asyncio
import os
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
    serve.add_argument("--mqtt", help="MQTT broker of the DJI docks: mqtt[s]://user:pass@host:port")
    serve.add_argument("--live-linger", type=float, help="seconds a drone push outlives its last viewer")
    serve.add_argument("--public-ip", help="address to announce in ICE candidates (1:1 NAT)")
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
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument("--log-format", choices=["auto", "json", "console"])
    return parser


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
        from gateway.app import Gateway

        return asyncio.run(_serve(Gateway(config)))
    return 2


async def _serve(gateway: Any) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    try:
        await stop.wait()
    finally:
        await gateway.stop()
    return 0
