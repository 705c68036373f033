"""Recording routes: ``GET /api/recordings?name=&from=&to=`` lists the recordings on disk and
``GET /api/recordings/{id}`` downloads one, ``GET /api/recordings/{id}/telemetry`` its telemetry
sidecar (JSON Lines). Ids are resolved by `RecordingStore`, which only accepts the ids it
makes; ``from``/``to`` are ISO-8601 times or epoch seconds."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from aiohttp import web

from gateway.media.recordings import RecordingStore


class BadTime(ValueError):
    pass


def parse_time(value: str) -> float:
    """Epoch seconds from ``1717000000``, ``1717000000.5`` or ISO-8601 (UTC unless it says)."""
    text = value.strip()
    try:
        epoch = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise BadTime(f"{value[:64]!r} is neither ISO-8601 nor epoch seconds") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if not math.isfinite(epoch) or epoch < 0:
        raise BadTime(f"{value[:64]!r} is not a time")
    return epoch


def recording_routes(store: RecordingStore) -> list[web.RouteDef]:
    async def list_recordings(request: web.Request) -> web.Response:
        query = request.query
        try:
            start = parse_time(query["from"]) if "from" in query else None
            end = parse_time(query["to"]) if "to" in query else None
        except BadTime as exc:
            return _error(400, str(exc))
        if start is not None and end is not None and end < start:
            return _error(400, "'to' is before 'from'")
        name = query.get("name") or None
        recordings = store.recordings(name=name, start=start, end=end)
        return web.json_response({"recordings": [r.to_json() for r in recordings]})

    async def download(request: web.Request) -> web.StreamResponse:
        recording = store.resolve(request.match_info["id"])
        if recording is None:
            return _error(404, "no such recording")
        headers = {"Content-Disposition": f'attachment; filename="{recording.id}.mp4"'}
        return web.FileResponse(recording.path, headers={**headers, "Content-Type": "video/mp4"})

    async def download_telemetry(request: web.Request) -> web.StreamResponse:
        recording = store.resolve(request.match_info["id"])
        path = recording.telemetry_path if recording is not None else None
        if recording is None or path is None:
            return _error(404, "no such recording, or it has no telemetry")
        headers = {
            "Content-Disposition": f'attachment; filename="{recording.id}.telemetry.jsonl"',
            "Content-Type": "application/jsonl",
        }
        return web.FileResponse(path, headers=headers)

    return [
        web.get("/api/recordings", list_recordings),
        web.get("/api/recordings/{id}", download),
        web.get("/api/recordings/{id}/telemetry", download_telemetry),
    ]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
