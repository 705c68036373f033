"""hls.js, fetched from npm at test time (see npm.py)."""

from __future__ import annotations

from pathlib import Path

from .npm import NpmBundle, NpmUnavailable

HLSJS = NpmBundle("hls.js", "1.6.19", "package/dist/hls.min.js", "hlsjs")
BUNDLE_NAME = HLSJS.file_name
HlsJsUnavailable = NpmUnavailable


def hlsjs_bundle() -> Path:
    """Path of a verified ``hls.min.js``; fetches it on first use."""
    return HLSJS.fetch()
