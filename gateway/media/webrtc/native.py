"""The floor's burst in C (`burst.c`): built with the machine's C compiler, loaded with cffi.

`burst.c` is a plain shared object (no Python headers), compiled once per source into a
cache directory and opened with cffi's ABI mode. Where it is not in the cache and there is
no C compiler, or the compiler fails, `load` says why and the floor stays in Python
(`floor.py`), which does the same work packet by packet. Whichever runs, `floor.self_test`
checks its bytes against pylibsrtp's ``Session.protect`` at start.

Where the object goes: ``$SKYRELAY_NATIVE_DIR`` if set, else ``$XDG_CACHE_HOME/skyrelay``
(``~/.cache/skyrelay``). Several processes may build at once (workers starting together):
each writes its own temporary file and renames it into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cffi  # type: ignore[import-untyped]  # no stubs (types-cffi is not a dependency)

from gateway.media.webrtc import burst

SOURCE = Path(__file__).with_name("burst.c")
COMPILE_TIMEOUT_S = 120.0
# No -Werror: a newer compiler's new warning must not turn the C burst off.
FLAGS = ("-O2", "-shared", "-fPIC", "-std=c11", "-Wall", "-pthread")

CDEF = (
    burst.CDEF_STRUCTS
    + """
typedef int (*sky_protect_fn)(void *ctx, void *rtp, int *len);
struct sky_scratch {
    unsigned char *buf;
    struct iovec *iov;
    struct mmsghdr *msgs;
    struct iovec *run_iov;
    struct mmsghdr *run_msgs;
    unsigned char *controls;
    sky_protect_fn protect;
    int status;
    int gso_errno;
    int gso;
    long length;
    long taken;
};
long sky_burst(struct sky_scratch *s, void *ctx, const unsigned char *header, int header_length,
               int payload_type, unsigned int sequence, uint32_t timestamp, const unsigned char *payloads,
               const int *lengths, int count, int mode, int fd, const void *name, unsigned int namelen);
struct sky_viewer {
    void *ctx;
    const unsigned char *header;
    int header_length;
    int payload_type;
    int fd;
    unsigned int namelen;
    const void *name;
    unsigned int sequence;
    uint32_t origin;
    uint32_t timestamp;
    long sent;
    long bursts;
    long gso_bursts;
};
int sky_fanout(struct sky_scratch *s, struct sky_viewer **viewers, int n, const unsigned char *payloads,
               const int *lengths, int count, int mode, uint32_t timestamp);
int sky_fanout2(struct sky_scratch *s, struct sky_scratch *s2, struct sky_viewer **viewers, int n,
                const unsigned char *payloads, const int *lengths, int count, int mode, int *stops,
                uint32_t timestamp);
"""
)

# sky_burst's modes
LAY_OUT, FRAMED, SEND, SEND_GSO = 0, 1, 2, 3
CONTROL_SPACE = 24  # CMSG_SPACE(sizeof(uint16_t)) on LP64


@dataclass
class Native:
    ffi: Any
    lib: Any
    path: Path


class NativeUnavailable(Exception):
    """Why the C burst cannot run here (the floor stays in Python)."""


def cache_dir() -> Path:
    configured = os.environ.get("SKYRELAY_NATIVE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "skyrelay"


def compiler() -> str | None:
    """The C compiler to use: ``$CC`` if set, else cc or gcc on PATH."""
    configured = os.environ.get("CC")
    if configured:
        return shutil.which(configured)
    return shutil.which("cc") or shutil.which("gcc")


def built_path() -> Path:
    """Where the object for this source and these flags lives (whichever compiler built it:
    the start check tests what it does)."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode())
    return cache_dir() / f"burst-{digest.hexdigest()[:16]}.so"


def build() -> Path:
    """The compiled object: from the cache (an image may carry one built without keeping the
    compiler), else built now. Raises NativeUnavailable."""
    try:
        target = built_path()
    except OSError as exc:
        raise NativeUnavailable(f"cannot read {SOURCE}: {exc}") from exc
    if target.exists():
        return target
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler (cc, gcc or $CC) on PATH")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".burst-", suffix=".so", dir=target.parent)
        os.close(handle)
    except OSError as exc:
        raise NativeUnavailable(f"cannot write {target.parent}: {exc}") from exc
    try:
        done = subprocess.run(
            [cc, *FLAGS, "-o", temporary, str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise NativeUnavailable(f"{cc} failed: {done.stderr.strip()[:500]}")
        os.replace(temporary, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"{cc}: {exc}") from exc
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


# Every object opened, kept for the life of the process: one that started its helper thread
# must never be closed (unmapped under the thread, then opened again at the same address,
# it would set up its lock and condition anew under the old thread still waiting there:
# a fan-out that never returns). The same path is opened once.
_OPENED: dict[Path, Native] = {}


def load() -> Native:
    """Build (if needed) and open the C burst (once per object file: `_OPENED`). Raises
    NativeUnavailable."""
    path = build()
    opened = _OPENED.get(path)
    if opened is not None:
        return opened
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    try:
        lib = ffi.dlopen(str(path))
        lib.sky_burst  # noqa: B018  # an object without the symbols is refused here
        lib.sky_fanout  # noqa: B018
        lib.sky_fanout2  # noqa: B018
    except (OSError, AttributeError) as exc:
        raise NativeUnavailable(f"cannot open {path}: {exc}") from exc
    opened = _OPENED[path] = Native(ffi, lib, path)
    return opened


def main() -> int:
    """``python -m gateway.media.webrtc.native``: build into the cache now (an image build
    does this while it has a compiler), print the object's path or why not."""
    try:
        print(build())
    except NativeUnavailable as exc:
        print(f"the C burst cannot be built: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
