"""The UDP-dropping `LD_PRELOAD` shim (udp_block.c), compiled with gcc at test time.

The shared object goes into the test cache (``$SKYRELAY_TEST_CACHE`` or
``~/.cache/skyrelay-tests``) under a name carrying the source's hash, so an edited shim is
rebuilt and parallel test runs never load a half-written file (build, then rename).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "udp_block.c"
GCC_TIMEOUT = 60.0


class ShimUnavailable(RuntimeError):
    """The shim could not be compiled."""


def cache_dir() -> Path:
    base = os.environ.get("SKYRELAY_TEST_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "skyrelay-tests"
    return root / "udp-block"


def udp_block_library() -> Path:
    """Path of the compiled shim; builds it on first use."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    dest = cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    library = dest / f"udp_block-{digest}.so"
    if library.is_file():
        return library
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ShimUnavailable("gcc not found: apt-get install -y gcc")
    fd, tmp_name = tempfile.mkstemp(prefix="udp_block-", suffix=".so.tmp", dir=dest)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        cmd = [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(tmp), str(SOURCE), "-ldl"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=GCC_TIMEOUT)
        if result.returncode != 0:
            raise ShimUnavailable(f"gcc failed ({result.returncode}):\n{result.stderr[-4000:]}")
        tmp.replace(library)
    finally:
        tmp.unlink(missing_ok=True)
    return library
