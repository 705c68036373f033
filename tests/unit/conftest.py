"""Fixtures of the unit tests (plain data, no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from .helpers import seed_sdps

# Hypothesis budgets. "ci" (the default) is the fixed budget of every run of the suite: the
# Hypothesis default of 100 examples, no deadline (two shared cores make timings meaningless).
# "fuzz" is scripts/fuzz's long run; HYPOTHESIS_MAX_EXAMPLES sets its budget. Tests that pin
# max_examples themselves (the broker codec, the WebRTC demux) keep their own.
settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "5000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def publish_offer() -> str:
    """Chrome's publish offer (sendonly) from the WCS documentation."""
    return seed_sdps()[0]


@pytest.fixture(scope="session")
def play_offer() -> str:
    """Chrome's play offer (recvonly) from the WCS documentation."""
    return seed_sdps()[1]


# --- real encoded streams, made once per run with the ffmpeg CLI -----------------------------

# name: (size, pix_fmt, x264 profile, extra x264 params); all Annex-B, 2-7 frames, a few KB.
H264_SPECS: dict[str, tuple[str, str, str, str]] = {
    "1280x720-baseline": ("1280x720", "yuv420p", "baseline", ""),
    "640x360-high": ("640x360", "yuv420p", "high", ""),
    "1920x1080-high": ("1920x1080", "yuv420p", "high", ""),  # coded 1088, cropped to 1080
    "320x240-main": ("320x240", "yuv420p", "main", ""),
    "320x240-baseline": ("320x240", "yuv420p", "baseline", ""),
    "1366x768-high444-cqm": ("1366x768", "yuv444p", "high444", "cqm=jvt"),  # scaling lists, crop
    "1920x1080-interlaced": ("1920x1080", "yuv420p", "high", "interlaced=1"),  # frame_mbs_only=0
    "854x480-high422": ("854x480", "yuv422p", "high422", ""),
    "gop-aud": ("320x240", "yuv420p", "baseline", "keyint=3:min-keyint=3:scenecut=0:aud=1"),
    "gop": ("640x360", "yuv420p", "high", "keyint=3:min-keyint=3:scenecut=0"),
}


def _h264_command(path: Path, spec: tuple[str, str, str, str]) -> list[str]:
    size, pix_fmt, profile, params = spec
    frames = "7" if path.stem.startswith("gop") else "2"
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    cmd += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", "-frames:v", frames]
    cmd += ["-pix_fmt", pix_fmt, "-c:v", "libx264", "-profile:v", profile, "-preset", "veryfast"]
    if params:
        cmd += ["-x264-params", params]
    return [*cmd, "-bsf:v", "h264_mp4toannexb", "-f", "h264", str(path)]


def _vp8_command(path: Path) -> list[str]:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    cmd += ["-f", "lavfi", "-i", "testsrc2=size=352x288:rate=25", "-frames:v", "5"]
    cmd += ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-g", "100", "-f", "ivf", str(path)]
    return cmd


@pytest.fixture(scope="session")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Every stream of H264_SPECS (``.h264``) and a VP8 IVF file (``vp8``), by name."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg CLI is not installed")
    out_dir = tmp_path_factory.mktemp("encoded")
    jobs: dict[str, tuple[Path, list[str]]] = {}
    for name, spec in H264_SPECS.items():
        path = out_dir / f"{name}.h264"
        jobs[name] = (path, _h264_command(path, spec))
    jobs["vp8"] = (out_dir / "vp8.ivf", _vp8_command(out_dir / "vp8.ivf"))
    procs = {
        name: subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for name, (_, cmd) in jobs.items()
    }
    result: dict[str, bytes] = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"ffmpeg failed for {name}: {err.decode(errors='replace')}"
        result[name] = jobs[name][0].read_bytes()
    return result
