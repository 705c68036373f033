"""Where DJI devices push their video when the settings do not say: the gateway's own
RTMP or WHIP ingest, at an address the device can reach."""

from __future__ import annotations

from gateway.config import Config


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
