"""The SDP of an RTSP session (RFC 4566, RFC 2326 appendix C, RFC 6184 8.1): parse a
DESCRIBE answer far enough to find and SETUP its H.264 video, and build the one a server
gives for a stream (its H.264 video, and its audio when it can be relayed as it is)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass, field

from gateway.media.h264 import find_parameter_sets
from gateway.media.rtsp.message import RtspError

H264_PAYLOAD_TYPE = 96
H264_CONTROL = "trackID=0"
AUDIO_CONTROL = "trackID=1"
# A served stream's track numbers, as in the controls above.
VIDEO_TRACK, AUDIO_TRACK = 0, 1


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """How a server's SDP carries a stream's audio codec, relayed as it is."""

    codec: str  # the codec name a Stream uses (aiortc's)
    payload_type: int
    rtpmap: str  # encoding/clock rate[/channels]
    clock_rate: int


# Opus always has a 48 kHz, two-channel rtpmap (RFC 7587 7); PCMU and PCMA have static
# payload types (RFC 3551 6).
SERVED_AUDIO = {
    "opus": AudioFormat("opus", 97, "opus/48000/2", 48000),
    "PCMU": AudioFormat("PCMU", 0, "PCMU/8000", 8000),
    "PCMA": AudioFormat("PCMA", 8, "PCMA/8000", 8000),
}


@dataclass(frozen=True, slots=True)
class SdpMedia:
    kind: str  # "video", "audio", ...
    port: int
    protocol: str
    formats: tuple[int, ...]
    control: str | None = None
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)  # pt -> (encoding, clock rate)
    fmtp: dict[int, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionDescription:
    control: str | None
    media: tuple[SdpMedia, ...]


@dataclass(frozen=True, slots=True)
class H264Track:
    """What a client needs to SETUP and depacketize an SDP's H.264 video."""

    control_url: str
    payload_type: int
    clock_rate: int
    packetization_mode: int
    sps: bytes | None
    pps: bytes | None


def parse_sdp(text: str) -> SessionDescription:
    session_control: str | None = None
    media: list[SdpMedia] = []
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue  # RFC 4566 5: be tolerant of what cameras send
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            try:
                port = int(parts[1].split("/")[0])
                formats = tuple(int(f) for f in parts[3:] if f.isdigit())
            except (IndexError, ValueError):
                raise RtspError(f"bad SDP media line {line[:60]!r}") from None
            media.append(SdpMedia(parts[0], port, parts[2], formats))
        elif kind == "a":
            name, _, arg = value.partition(":")
            current = media[-1] if media else None
            if name == "control":
                if current is None:
                    session_control = arg.strip()
                else:
                    media[-1] = dataclasses.replace(current, control=arg.strip())
            elif name == "rtpmap" and current is not None:
                pt, _, encoding = arg.partition(" ")
                parts = encoding.strip().split("/")
                if pt.isdigit() and len(parts) >= 2 and parts[1].isdigit():
                    current.rtpmap[int(pt)] = (parts[0], int(parts[1]))
            elif name == "fmtp" and current is not None:
                pt, _, params = arg.partition(" ")
                if pt.isdigit():
                    current.fmtp[int(pt)] = _fmtp(params)
    return SessionDescription(session_control, tuple(media))


def _fmtp(params: str) -> dict[str, str]:
    values = {}
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key:
            values[key.strip().lower()] = value.strip()
    return values


def resolve_control(base: str, control: str | None) -> str:
    """A control attribute made absolute (RFC 2326 C.1.1): an absolute URL stays, ``*`` or
    none is the base itself, and anything else is appended to the base as a path segment,
    as cameras, ffmpeg and live555 do (not RFC 3986 merging, which would drop the stream
    name of a base without a trailing slash)."""
    if not control or control == "*":
        return base
    if control.lower().startswith("rtsp://") or control.lower().startswith("rtsps://"):
        return control
    return base + control if base.endswith("/") else f"{base}/{control}"


def sprop_parameter_sets(sprop: str) -> tuple[bytes | None, bytes | None]:
    """The first SPS and PPS of a ``sprop-parameter-sets`` value; a part that is not base64
    is skipped (the stream carries them in band too)."""
    nal_units = []
    for part in sprop.split(","):
        try:
            nal_units.append(base64.b64decode(part.strip(), validate=True))
        except (binascii.Error, ValueError):
            continue
    return find_parameter_sets(nal_units)


def h264_track(sdp: SessionDescription, base: str) -> H264Track | None:
    """The first H.264 video of the session (audio and other media are not used)."""
    for media in sdp.media:
        if media.kind != "video":
            continue
        for pt in media.formats:
            encoding, clock_rate = media.rtpmap.get(pt, ("", 0))
            if encoding.upper() != "H264":
                continue
            fmtp = media.fmtp.get(pt, {})
            mode = fmtp.get("packetization-mode", "0")
            sps, pps = sprop_parameter_sets(fmtp.get("sprop-parameter-sets", ""))
            return H264Track(
                control_url=resolve_control(base, media.control),
                payload_type=pt,
                clock_rate=clock_rate or 90000,
                packetization_mode=int(mode) if mode.isdigit() else 0,
                sps=sps,
                pps=pps,
            )
    return None


def build_h264_sdp(
    *,
    session_id: int,
    address: str,
    name: str,
    sps: bytes | None,
    pps: bytes | None,
    audio: AudioFormat | None = None,
) -> str:
    """The SDP of a stream's H.264 video, controlled as ``trackID=0`` relative to the
    Content-Base, with the cached SPS/PPS so a player can set up its decoder at once; then
    its ``audio``, if any, as ``trackID=1``."""
    fmtp = ["packetization-mode=1"]
    if sps is not None and len(sps) >= 4:
        fmtp.append(f"profile-level-id={sps[1:4].hex().upper()}")
    if sps is not None and pps is not None:
        sets = ",".join(base64.b64encode(nal).decode() for nal in (sps, pps))
        fmtp.append(f"sprop-parameter-sets={sets}")
    family = "IP6" if ":" in address else "IP4"
    safe_name = "".join(c for c in name if c.isprintable()) or "-"
    lines = [
        "v=0",
        f"o=- {session_id} 1 IN {family} {address}",
        f"s={safe_name}",
        f"c=IN {family} {'::' if family == 'IP6' else '0.0.0.0'}",
        "t=0 0",
        "a=tool:skyrelay",
        "a=range:npt=0-",
        "a=control:*",
        f"m=video 0 RTP/AVP {H264_PAYLOAD_TYPE}",
        f"a=rtpmap:{H264_PAYLOAD_TYPE} H264/90000",
        f"a=fmtp:{H264_PAYLOAD_TYPE} {';'.join(fmtp)}",
        f"a=control:{H264_CONTROL}",
    ]
    if audio is not None:
        lines += [
            f"m=audio 0 RTP/AVP {audio.payload_type}",
            f"a=rtpmap:{audio.payload_type} {audio.rtpmap}",
            f"a=control:{AUDIO_CONTROL}",
        ]
    return "\r\n".join(lines) + "\r\n"
