"""Which local addresses the gateway offers as ICE host candidates.

aioice gathers on every non-loopback interface. The gateway makes that configurable: a
browser on the same host reaches it on 127.0.0.1, a container announces only its own
interface, and a machine with only loopback still offers a candidate. aioice has no option
for it, so its module-level address lookup is replaced once, at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence

import aioice.ice

from gateway.media.webrtc import aiortc_compat

# Read leniently: an aioice without it gathers some other way, and aiortc_compat.check()
# reports the workaround as unavailable rather than the gateway failing at import.
_original = getattr(aioice.ice, "get_host_addresses", None)


def configure_host_addresses(addresses: Sequence[str]) -> None:
    original = _original
    if original is None:
        return
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if chosen:
            return list(chosen)
        found = original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        return found or ["127.0.0.1"]

    aioice.ice.get_host_addresses = host_addresses


_original_connect = aioice.ice.Connection.connect


async def _connect_unless_closed(self: aioice.ice.Connection) -> None:
    """aioice starts its consent-freshness task when connect() succeeds, even when close()
    ran while the checks were finishing; that task then loops forever on a closed
    connection (one leaked task per such peer). Stop it and report the connect as failed."""
    await _original_connect(self)
    if aiortc_compat.connection_closing(self):
        aiortc_compat.cancel_consent_task(self)
        raise ConnectionError("ICE connection closed while connecting")


def guard_consent_task() -> None:
    aioice.ice.Connection.connect = _connect_unless_closed  # type: ignore[method-assign]
