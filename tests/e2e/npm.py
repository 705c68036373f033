"""Browser libraries fetched from npm at test time (never committed): the Flashphoner
WebSDK, hls.js.

`NpmBundle.fetch()` runs `npm pack PACKAGE@VERSION` into a cache directory
(``$SKYRELAY_TEST_CACHE`` or ``~/.cache/skyrelay-tests``), checks the tarball against the
registry's published ``dist.integrity`` (sha512 SRI), and extracts one prebuilt file. Any
failure raises `NpmUnavailable` with a message that says what to do; tests turn it into a
failure, never a skip.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

NPM_TIMEOUT = 120.0


class NpmUnavailable(RuntimeError):
    """A package could not be fetched, verified or extracted."""


def sri_sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


@dataclass(frozen=True)
class NpmBundle:
    package: str
    version: str
    member: str  # the file in the tarball, e.g. "package/dist/hls.min.js"
    cache_name: str  # the cache subdirectory

    @property
    def file_name(self) -> str:
        return Path(self.member).name

    def cache_dir(self) -> Path:
        base = os.environ.get("SKYRELAY_TEST_CACHE")
        root = Path(base) if base else Path.home() / ".cache" / "skyrelay-tests"
        return root / self.cache_name / self.version

    def fetch(self) -> Path:
        """Path of the verified file; fetches the package on first use. One test process
        at a time (pytest-xdist runs several, sharing the cache)."""
        dest = self.cache_dir()
        dest.mkdir(parents=True, exist_ok=True)
        with (dest / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._fetch(dest)

    def _fetch(self, dest: Path) -> Path:
        integrity = self.published_integrity(dest)
        tarball = next((t for t in dest.glob("*.tgz") if sri_sha512(t) == integrity), None)
        if tarball is None:
            for stale in dest.glob("*.tgz"):
                stale.unlink()
            tarball = self._fetch_tarball(dest, integrity)
        target = dest / self.file_name
        # Re-extract every run: cheap, and the file then always comes from the verified tarball.
        self._extract(tarball, target)
        return target

    def published_integrity(self, workdir: Path) -> str:
        """The registry's `dist.integrity` of the pinned version, e.g. ``sha512-...``."""
        out = self._npm("view", f"{self.package}@{self.version}", "dist.integrity", "--json", cwd=workdir)
        try:
            value = json.loads(out)
        except json.JSONDecodeError as exc:
            raise NpmUnavailable(f"unexpected `npm view` output: {out[:500]!r}") from exc
        if not isinstance(value, str) or not value.startswith("sha512-"):
            raise NpmUnavailable(f"no sha512 integrity for {self.package}@{self.version}: {value!r}")
        return value

    def _npm(self, *args: str, cwd: Path) -> str:
        npm = shutil.which("npm")
        if npm is None:
            raise NpmUnavailable(
                f"npm is not installed: it is needed to fetch {self.package}@{self.version} "
                "for the browser tests (install Debian's nodejs/npm)"
            )
        cmd = [npm, *args]
        try:
            done = subprocess.run(
                cmd, cwd=cwd, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise NpmUnavailable(
                f"`{' '.join(cmd)}` timed out after {NPM_TIMEOUT:.0f} s: is the npm registry reachable?"
            ) from exc
        if done.returncode != 0:
            raise NpmUnavailable(
                f"`{' '.join(cmd)}` failed (exit {done.returncode}); the npm registry must be "
                f"reachable to fetch {self.package}@{self.version}.\n{done.stderr.strip()[-2000:]}"
            )
        return done.stdout

    def _fetch_tarball(self, dest: Path, integrity: str) -> Path:
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            workdir = Path(tmp)
            spec = f"{self.package}@{self.version}"
            out = self._npm("pack", spec, "--json", "--pack-destination", tmp, cwd=workdir)
            try:
                filename = json.loads(out)[0]["filename"]
            except (json.JSONDecodeError, LookupError, TypeError) as exc:
                raise NpmUnavailable(f"unexpected `npm pack` output: {out[:500]!r}") from exc
            tarball = workdir / Path(filename).name
            actual = sri_sha512(tarball)
            if actual != integrity:
                raise NpmUnavailable(
                    f"{tarball.name}: integrity mismatch: registry says {integrity}, got {actual}"
                )
            final = dest / tarball.name
            os.replace(tarball, final)
            return final

    def _extract(self, tarball: Path, target: Path) -> None:
        with tarfile.open(tarball, "r:gz") as tar:
            try:
                member = tar.getmember(self.member)
            except KeyError as exc:
                raise NpmUnavailable(f"{tarball.name} has no {self.member}") from exc
            src = tar.extractfile(member)
            if src is None or not member.isfile():
                raise NpmUnavailable(f"{tarball.name}: {self.member} is not a regular file")
            tmp = target.with_suffix(".part")
            with src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(tmp, target)
