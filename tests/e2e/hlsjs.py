"""hls.js, fetched from npm at test time (never committed), as `websdk.py` fetches the WebSDK.

`hlsjs_bundle()` runs `npm pack hls.js@VERSION` into a cache directory (``$SKYRELAY_TEST_CACHE``
or ``~/.cache/skyrelay-tests``), checks the tarball against the registry's published
``dist.integrity`` (sha512 SRI), and extracts the prebuilt ``package/dist/hls.min.js``. Any
failure raises `HlsJsUnavailable` saying what to do; tests turn it into a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .websdk import sri_sha512

PACKAGE = "hls.js"
VERSION = "1.6.19"
BUNDLE = "package/dist/hls.min.js"
BUNDLE_NAME = "hls.min.js"
NPM_TIMEOUT = 120.0


class HlsJsUnavailable(RuntimeError):
    """hls.js could not be fetched, verified or extracted."""


def cache_dir() -> Path:
    base = os.environ.get("SKYRELAY_TEST_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "skyrelay-tests"
    return root / "hlsjs" / VERSION


def _npm(*args: str, cwd: Path) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise HlsJsUnavailable(
            f"npm is not installed: it is needed to fetch {PACKAGE}@{VERSION} for the browser tests "
            "(install Debian's nodejs/npm)"
        )
    cmd = [npm, *args]
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HlsJsUnavailable(
            f"`{' '.join(cmd)}` timed out after {NPM_TIMEOUT:.0f} s: is the npm registry reachable?"
        ) from exc
    if done.returncode != 0:
        raise HlsJsUnavailable(
            f"`{' '.join(cmd)}` failed (exit {done.returncode}); the npm registry must be reachable "
            f"to fetch {PACKAGE}@{VERSION}.\n{done.stderr.strip()[-2000:]}"
        )
    return done.stdout


def published_integrity(workdir: Path) -> str:
    out = _npm("view", f"{PACKAGE}@{VERSION}", "dist.integrity", "--json", cwd=workdir)
    try:
        value = json.loads(out)
    except json.JSONDecodeError as exc:
        raise HlsJsUnavailable(f"unexpected `npm view` output: {out[:500]!r}") from exc
    if not isinstance(value, str) or not value.startswith("sha512-"):
        raise HlsJsUnavailable(f"no sha512 integrity for {PACKAGE}@{VERSION}: {value!r}")
    return value


def _fetch_tarball(dest: Path, integrity: str) -> Path:
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        workdir = Path(tmp)
        out = _npm("pack", f"{PACKAGE}@{VERSION}", "--json", "--pack-destination", tmp, cwd=workdir)
        try:
            filename = json.loads(out)[0]["filename"]
        except (json.JSONDecodeError, LookupError, TypeError) as exc:
            raise HlsJsUnavailable(f"unexpected `npm pack` output: {out[:500]!r}") from exc
        tarball = workdir / Path(filename).name
        actual = sri_sha512(tarball)
        if actual != integrity:
            raise HlsJsUnavailable(
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
            raise HlsJsUnavailable(f"{tarball.name} has no {BUNDLE}") from exc
        src = tar.extractfile(member)
        if src is None or not member.isfile():
            raise HlsJsUnavailable(f"{tarball.name}: {BUNDLE} is not a regular file")
        tmp = target.with_suffix(".part")
        with src, tmp.open("wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(tmp, target)


def hlsjs_bundle() -> Path:
    """Path of a verified ``hls.min.js``; fetches it on first use."""
    dest = cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    integrity = published_integrity(dest)
    tarball = dest / f"hls.js-{VERSION}.tgz"
    if not tarball.exists() or sri_sha512(tarball) != integrity:
        tarball.unlink(missing_ok=True)
        tarball = _fetch_tarball(dest, integrity)
    bundle = dest / BUNDLE_NAME
    # Re-extract every run: the bundle then always comes from the verified tarball.
    _extract_bundle(tarball, bundle)
    return bundle
