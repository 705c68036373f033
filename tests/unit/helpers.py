"""Plain-data helpers for the unit tests: WCS frames, the seed document's SDPs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gateway.media import h264

SEED_WCS = Path("/work/shared/seeds/002_1d5a986da1e53157.txt")

# A minimal SDP for message-level tests (parse_frame does not parse SDP).
TINY_SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"

# The publishStream / playStream bodies of the WCS documentation (seed 002), without sdp.
PUBLISH_FIELDS: dict[str, Any] = {
    "mediaSessionId": "90e14ad0-fdb2-11e8-bce2-a3f72476fb49",
    "name": "test",
    "published": True,
    "hasVideo": True,
    "hasAudio": True,
    "status": "PENDING",
    "record": False,
    "mediaProvider": "WebRTC",
    "bitrate": 0,
    "minBitrate": 0,
    "maxBitrate": 0,
}
PLAY_FIELDS: dict[str, Any] = {
    "mediaSessionId": "22588500-fdb3-11e8-bddf-9b115426f01b",
    "name": "test",
    "published": False,
    "hasVideo": True,
    "hasAudio": True,
    "status": "PENDING",
    "record": False,
    "width": 0,
    "height": 0,
    "mediaProvider": "WebRTC",
    "bitrate": 0,
    "minBitrate": 0,
    "maxBitrate": 0,
    "quality": 0,
}


def client_frame(message: str, *data: Any) -> str:
    """A client frame as the WebSDK sends it: ``{"message": NAME, "data": [obj]}``."""
    return json.dumps({"message": message, "data": list(data)})


def decode(text: str) -> dict[str, Any]:
    """A server frame, checked for the framing every WebSDK handler relies on."""
    frame = json.loads(text)
    assert isinstance(frame, dict), text
    assert set(frame) == {"message", "data"}, text
    assert isinstance(frame["message"], str)
    assert isinstance(frame["data"], list), f"'data' must be an array: {text}"
    assert frame["data"], f"'data' must not be empty (the WebSDK reads data[0]): {text}"
    return frame


def seed_sdps() -> tuple[str, str]:
    """The publish and play offers (Chrome) of the WCS documentation, JSON-unescaped."""
    text = SEED_WCS.read_text()
    found = re.findall(r'^"sdp":("(?:[^"\\]|\\.)*")', text, re.M)
    assert len(found) == 2, "seed 002 should hold exactly a publish and a play offer"
    publish, play = (json.loads(item) for item in found)
    return publish, play


# The official live_capacity example of the DJI Cloud API (shared reference §3): three
# videos of aircraft 1ZNDH1D0010054.
DJI_LIVE_CAPACITY: dict[str, Any] = {
    "available_video_number": 2,
    "coexist_video_number_max": 1,
    "device_list": [
        {
            "sn": "1ZNDH1D0010054",
            "available_video_number": 2,
            "coexist_video_number_max": 0,
            "camera_list": [
                {
                    "camera_index": "42-0-0",
                    "available_video_number": 1,
                    "coexist_video_number_max": 1,
                    "video_list": [
                        {"video_index": "zoom-0", "video_type": "zoom"},
                        {"video_index": "wide-0", "video_type": "wide"},
                    ],
                },
                {
                    "camera_index": "39-0-7",
                    "available_video_number": 1,
                    "coexist_video_number_max": 1,
                    "video_list": [{"video_index": "normal-0", "video_type": "normal"}],
                },
            ],
        }
    ],
}


# --- H.264 elementary streams ---------------------------------------------------------

VCL = (1, h264.NAL_IDR)


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F


def access_units(data: bytes) -> list[list[bytes]]:
    """Group an elementary stream (one slice per picture) into access units of NAL units."""
    units: list[list[bytes]] = []
    pending: list[bytes] = []
    for nal in h264.iter_nal_units(data):
        if nal_type(nal) == h264.NAL_AUD and pending:
            units.append(pending)
            pending = []
        pending.append(nal)
        if nal_type(nal) in VCL:
            units.append(pending)
            pending = []
    assert not pending or all(nal_type(n) == h264.NAL_AUD for n in pending)
    return units


def annexb(nals: list[bytes]) -> bytes:
    return b"".join(h264.START_CODE + nal for nal in nals)
