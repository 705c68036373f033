"""The HTTP offer/answer exchange that WHIP (publish) and WHEP (play) share: the offer's
size limit, and what a refused or unusable offer answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.media.webrtc.sdp import OfferError

MAX_OFFER_BYTES = 64 * 1024


class OfferRefused(Exception):
    """An offer the gateway will not answer; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, info: str) -> None:
        super().__init__(info)
        self.status = status
        self.info = info


def check_offer_size(offer_sdp: str) -> None:
    if len(offer_sdp) > MAX_OFFER_BYTES:
        raise OfferRefused(413, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")


async def answer_offer(accept: Awaitable[str], end: Callable[[str], Awaitable[None]]) -> str:
    """The answer ``accept`` gives, or OfferRefused(400) after ``end``-ing the session with
    the reason when the offer is bad or aiortc cannot use it."""
    try:
        return await accept
    except OfferError as exc:
        await end(f"bad offer: {exc}")
        raise OfferRefused(400, str(exc)) from None
    except Exception as exc:  # aiortc rejects some offers with its own errors
        await end(f"offer not usable: {exc}")
        raise OfferRefused(400, f"SDP offer not usable: {type(exc).__name__}: {exc}"[:300]) from None
