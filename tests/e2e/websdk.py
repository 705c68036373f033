"""The unmodified Flashphoner WebSDK, fetched from npm at test time (see npm.py)."""

from __future__ import annotations

from pathlib import Path

from .npm import NpmBundle, NpmUnavailable

WEBSDK = NpmBundle("@flashphoner/websdk", "2.0.276", "package/flashphoner-webrtc-only.js", "websdk")
BUNDLE_NAME = WEBSDK.file_name
WebSdkUnavailable = NpmUnavailable


def websdk_js() -> Path:
    """Path of a verified ``flashphoner-webrtc-only.js``; fetches it on first use."""
    return WEBSDK.fetch()
