"""The one way protocol code reads a JSON object from the wire (WCS frames, DJI messages,
the cluster's control messages): orjson, and the protocol's own error for what is not one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson


def loads_object(
    data: str | bytes, error: Callable[[str], Exception], not_json: str, not_object: str
) -> dict[str, Any]:
    """``data`` as a JSON object; else ``error(not_json + ": " + why)`` or ``error(not_object)``."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise error(f"{not_json}: {exc}") from None
    if not isinstance(value, dict):
        raise error(not_object)
    return value
