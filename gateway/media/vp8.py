"""VP8 frame header helpers (RFC 6386 section 9.1). Pure functions over bytes."""

from __future__ import annotations


def is_keyframe(frame: bytes) -> bool:
    return len(frame) >= 3 and (frame[0] & 0x01) == 0


def keyframe_dimensions(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe, or None if this is not a valid keyframe."""
    if not is_keyframe(frame) or len(frame) < 10 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None
