"""The unmodified Flashphoner WebSDK, fetched from npm at test time (never committed).

`websdk_js()` runs `npm pack @flashphoner/websdk@VERSION` into a cache directory
(``$SKYRELAY_TEST_CACHE`` or ``~/.cache/skyrelay-tests``), checks the tarball against the
registry's published ``dist.integrity`` (sha512 SRI), and extracts the prebuilt
``package/flashphoner-webrtc-only.js`` bundle. Any failure raises `WebSdkUnavailable` with
a message that says what to do; tests turn it into a failure, never a skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@flashphoner/websdk"
VERSION = "2.0.276"
BUNDLE = "package/flashphoner-webrtc-only.js"
BUNDLE_NAME = "flashphoner-webrtc-only.js"
NPM_TIMEOUT = 120.0


class WebSdkUnavailable(RuntimeError):
    """The WebSDK could not be fetched, verified or extracted."""


def cache_dir() -> Path:
    base = os.environ.get("SKYRELAY_TEST_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "skyrelay-tests"
    return root / "websdk" / VERSION


def _npm(*args: str, cwd: Path) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise WebSdkUnavailable(
            "npm is not installed: it is needed to fetch "
            f"{PACKAGE}@{VERSION} for the browser tests (install Debian's nodejs/npm)"
        )
    cmd = [npm, *args]
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise WebSdkUnavailable(
            f"`{' '.join(cmd)}` timed out after {NPM_TIMEOUT:.0f} s: is the npm registry reachable?"
        ) from exc
    if done.returncode != 0:
        raise WebSdkUnavailable(
            f"`{' '.join(cmd)}` failed (exit {done.returncode}); the npm registry must be "
            f"reachable to fetch {PACKAGE}@{VERSION}.\n{done.stderr.strip()[-2000:]}"
        )
    return done.stdout


def published_integrity(workdir: Path) -> str:
    """The registry's `dist.integrity` of the pinned version, e.g. ``sha512-...``."""
    out = _npm("view", f"{PACKAGE}@{VERSION}", "dist.integrity", "--json", cwd=workdir)
    try:
        value = json.loads(out)
    except json.JSONDecodeError as exc:
        raise WebSdkUnavailable(f"unexpected `npm view` output: {out[:500]!r}") from exc
    if not isinstance(value, str) or not value.startswith("sha512-"):
        raise WebSdkUnavailable(f"no sha512 integrity for {PACKAGE}@{VERSION}: {value!r}")
    return value


def sri_sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _fetch_tarball(dest: Path, integrity: str) -> Path:
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        workdir = Path(tmp)
        out = _npm("pack", f"{PACKAGE}@{VERSION}", "--json", "--pack-destination", tmp, cwd=workdir)
        try:
            filename = json.loads(out)[0]["filename"]
        except (json.JSONDecodeError, LookupError, TypeError) as exc:
            raise WebSdkUnavailable(f"unexpected `npm pack` output: {out[:500]!r}") from exc
        tarball = workdir / Path(filename).name
        actual = sri_sha512(tarball)
        if actual != integrity:
            raise WebSdkUnavailable(
                f"{tarball.name}: integrity mismatch: registry says {integrity}, got {actual}"
            )
        final = dest / tarball.name
        os.replace(tarball, final)
        return final


def _extract_bundle(tarball: Path, target: Path) -> None:
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            member = tar.getmember(BUNDLE)
        except KeyError as exc:
            raise WebSdkUnavailable(f"{tarball.name} has no {BUNDLE}") from exc
        src = tar.extractfile(member)
        if src is None or not member.isfile():
            raise WebSdkUnavailable(f"{tarball.name}: {BUNDLE} is not a regular file")
        tmp = target.with_suffix(".part")
        with src, tmp.open("wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(tmp, target)


def websdk_js() -> Path:
    """Path of a verified ``flashphoner-webrtc-only.js``; fetches it on first use."""
    dest = cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    integrity = published_integrity(dest)
    tarball = dest / f"flashphoner-websdk-{VERSION}.tgz"
    if not tarball.exists() or sri_sha512(tarball) != integrity:
        tarball.unlink(missing_ok=True)
        tarball = _fetch_tarball(dest, integrity)
    bundle = dest / BUNDLE_NAME
    # Re-extract every run: cheap, and the bundle then always comes from the verified tarball.
    _extract_bundle(tarball, bundle)
    return bundle
