"""gateway.media.vp8 on a real libvpx stream (IVF container parsed here)."""

from __future__ import annotations

import struct

import pytest

from gateway.media import vp8


def ivf_frames(data: bytes) -> tuple[tuple[int, int], list[bytes]]:
    """(width, height) of the IVF header and the frames: a 32-byte file header, then
    a 12-byte header (size, 64-bit pts) before each frame."""
    assert data[:4] == b"DKIF"
    version, header_size, fourcc, width, height = struct.unpack("<HHIHH", data[4:16])
    assert (version, header_size, fourcc) == (0, 32, int.from_bytes(b"VP80", "little"))
    frames: list[bytes] = []
    offset = header_size
    while offset < len(data):
        size, _pts = struct.unpack("<IQ", data[offset : offset + 12])
        offset += 12
        frames.append(data[offset : offset + size])
        offset += size
    assert offset == len(data)
    return (width, height), frames


@pytest.fixture(scope="module")
def vp8_frames(encoded: dict[str, bytes]) -> list[bytes]:
    size, frames = ivf_frames(encoded["vp8"])
    assert size == (352, 288)
    assert len(frames) == 5
    return frames


def test_first_frame_is_a_keyframe(vp8_frames: list[bytes]) -> None:
    assert vp8.is_keyframe(vp8_frames[0])
    assert vp8.keyframe_dimensions(vp8_frames[0]) == (352, 288)


def test_delta_frames(vp8_frames: list[bytes]) -> None:
    for frame in vp8_frames[1:]:
        assert not vp8.is_keyframe(frame)
        assert vp8.keyframe_dimensions(frame) is None


def test_scaling_bits_are_ignored(vp8_frames: list[bytes]) -> None:
    frame = bytearray(vp8_frames[0])
    frame[7] |= 0xC0  # horizontal_scale
    frame[9] |= 0x40  # vertical_scale
    assert vp8.keyframe_dimensions(bytes(frame)) == (352, 288)


def test_keyframe_without_start_code(vp8_frames: list[bytes]) -> None:
    frame = bytearray(vp8_frames[0])
    frame[3] = 0x00
    assert vp8.is_keyframe(bytes(frame))
    assert vp8.keyframe_dimensions(bytes(frame)) is None


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 6, 9])
def test_truncated_keyframe(vp8_frames: list[bytes], cut: int) -> None:
    frame = vp8_frames[0][:cut]
    assert vp8.keyframe_dimensions(frame) is None
    if cut < 3:
        assert not vp8.is_keyframe(frame)


def test_zero_dimensions() -> None:
    frame = b"\x10\x02\x00\x9d\x01\x2a\x00\x00\x20\x00"
    assert vp8.is_keyframe(frame)
    assert vp8.keyframe_dimensions(frame) is None


def test_handmade_keyframe_header() -> None:
    # frame tag (key, version 0, show), start code, 1280 x 720 little-endian
    frame = b"\x50\x42\x00\x9d\x01\x2a" + (1280).to_bytes(2, "little") + (720).to_bytes(2, "little")
    assert vp8.keyframe_dimensions(frame) == (1280, 720)
