"""Offer checks and answer rewriting. Pure functions over SDP text."""

from __future__ import annotations

from dataclasses import dataclass

from aiortc import RTCRtpSender
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.sdp import SessionDescription

from gateway.media.stream import Codec, MediaKind

# What a relayed publisher may send: no transcoding, so only what browsers and aiortc
# senders carry as is. H.264 first: it is what RTMP/RTSP/HLS sinks can use too.
PUBLISH_VIDEO = ("video/H264", "video/VP8")
PUBLISH_AUDIO = ("audio/opus", "audio/PCMU", "audio/PCMA")


class OfferError(ValueError):
    """An offer the gateway cannot answer; the message is shown to the client."""


@dataclass(frozen=True, slots=True)
class OfferedMedia:
    kind: MediaKind
    direction: str
    codecs: list[RTCRtpCodecParameters]


def parse_offer(sdp: str) -> list[OfferedMedia]:
    text = sdp.replace("\r\n", "\n").replace("\n", "\r\n")
    if not text.startswith("v=0"):
        raise OfferError("Invalid SDP: it must start with 'v=0'")
    try:
        description = SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        raise OfferError(f"Invalid SDP: {type(exc).__name__}: {exc}"[:300]) from None
    media = [
        OfferedMedia("audio" if m.kind == "audio" else "video", m.direction or "sendrecv", list(m.rtp.codecs))
        for m in description.media
        if m.kind in ("audio", "video")
    ]
    if not media:
        raise OfferError("Invalid SDP: no audio or video media section")
    if not all(m.ice and m.ice.usernameFragment and m.ice.password for m in description.media):
        raise OfferError("Invalid SDP: no ICE credentials (a=ice-ufrag/a=ice-pwd)")
    if not all(m.dtls and m.dtls.fingerprints for m in description.media):
        raise OfferError("Invalid SDP: no DTLS fingerprint (a=fingerprint)")
    return media


def data_channel_offered(sdp: str) -> bool:
    """Whether an offer has an SCTP ``m=application`` section (the peer can take data
    channels: the telemetry channel is only opened then)."""
    return any(line.startswith("m=application ") and "SCTP" in line.upper() for line in sdp.splitlines())


def negotiated_codecs(sdp: str) -> dict[str, list[RTCRtpCodecParameters]]:
    """The codecs of each media section (by its mid) of a description, in its order: for
    the gateway's own answer, what was negotiated, first choice first."""
    description = SessionDescription.parse(sdp)
    return {m.rtp.muxId: list(m.rtp.codecs) for m in description.media if m.rtp.muxId}


def capabilities(mime_types: tuple[str, ...], kind: str) -> list[RTCRtpCodecCapability]:
    """aiortc's codec capabilities for ``mime_types`` in that order, each with its RTX."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for mime in mime_types for c in caps if c.mimeType.lower() == mime.lower()]
    chosen += [c for c in caps if c.mimeType.lower().endswith("/rtx")]
    return chosen


def usable_codecs(offered: OfferedMedia, mime_types: tuple[str, ...]) -> list[RTCRtpCodecParameters]:
    local = [
        RTCRtpCodecParameters(
            mimeType=c.mimeType,
            clockRate=c.clockRate,
            channels=c.channels,
            payloadType=0,
            parameters=dict(c.parameters),
        )
        for c in capabilities(mime_types, offered.kind)
        if not c.mimeType.lower().endswith("/rtx")
    ]
    return [c for c in find_common_codecs(local, offered.codecs) if not c.mimeType.lower().endswith("/rtx")]


def check_publish_offer(media: list[OfferedMedia]) -> None:
    """A publisher must send at least one track, each in a codec we can relay."""
    sending = [m for m in media if m.direction in ("sendonly", "sendrecv")]
    if not sending:
        raise OfferError("The offer sends no media (no sendonly/sendrecv audio or video section)")
    for kind in ("audio", "video"):
        if sum(1 for m in sending if m.kind == kind) > 1:
            raise OfferError(f"The offer sends more than one {kind} track: a stream has one of each")
    for item in sending:
        wanted = PUBLISH_VIDEO if item.kind == "video" else PUBLISH_AUDIO
        if not usable_codecs(item, wanted):
            names = "H264 (packetization-mode=1) or VP8" if item.kind == "video" else "Opus, PCMU or PCMA"
            raise OfferError(f"No usable {item.kind} codec in the offer: the gateway relays {names}")


def check_play_offer(media: list[OfferedMedia], video: Codec | None, audio: Codec | None) -> None:
    """A player must receive at least one track the stream has, in the stream's codec."""
    receivable = [m for m in media if m.direction in ("recvonly", "sendrecv")]
    if not receivable:
        raise OfferError("The offer receives no media (no recvonly/sendrecv audio or video section)")
    matched = 0
    for item in receivable:
        codec = video if item.kind == "video" else audio
        if codec is None:
            continue
        if not usable_codecs(item, (f"{item.kind}/{codec.name}",)):
            raise OfferError(f"The player does not accept {codec.name}, the stream's {item.kind} codec")
        matched += 1
    if not matched:
        raise OfferError("The stream has none of the media kinds the player asks for")


def add_public_candidates(sdp: str, public_ip: str) -> str:
    """Announce every host candidate a second time on ``public_ip`` (1:1 NAT)."""
    lines = sdp.split("\r\n")
    out: list[str] = []
    for line in lines:
        out.append(line)
        if line.startswith("a=candidate:") and " typ host" in line:
            parts = line[len("a=candidate:") :].split(" ")
            if len(parts) >= 8 and parts[4] != public_ip:
                parts[0] = "p" + parts[0]
                parts[3] = str(max(int(parts[3]) - 1, 0))  # just below the host candidate
                parts[4] = public_ip
                out.append("a=candidate:" + " ".join(parts))
    return "\r\n".join(out)
