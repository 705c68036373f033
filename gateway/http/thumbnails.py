"""Live thumbnail routes: ``GET /api/streams/{name}/thumbnail.jpg?width=`` (and ``.png``).

Stream names may hold slashes (DJI ``video_id``s), so these routes must be added before the
generic ``/api/streams/{name}`` one. The work and the caching are in `Thumbnails`."""

from __future__ import annotations

from aiohttp import web

from gateway.media.thumbnails import (
    MAX_WIDTH,
    MIN_WIDTH,
    ImageFormat,
    Thumbnails,
    ThumbnailUnavailable,
    Unavailable,
    check_width,
)

STATUS = {
    Unavailable.UNKNOWN_STREAM: 404,
    Unavailable.NO_PICTURE: 503,  # try again after the next keyframe
    Unavailable.UNSUPPORTED_CODEC: 501,
    Unavailable.DECODE_FAILED: 503,
}
# The image is cached for about a second on our side; caches downstream must not keep it.
NO_STORE = {"Cache-Control": "no-store"}


def thumbnail_routes(thumbnails: Thumbnails) -> list[web.RouteDef]:
    async def jpeg(request: web.Request) -> web.Response:
        return await _serve(thumbnails, request, "jpeg")

    async def png(request: web.Request) -> web.Response:
        return await _serve(thumbnails, request, "png")

    return [
        web.get("/api/streams/{name:.+}/thumbnail.jpg", jpeg),
        web.get("/api/streams/{name:.+}/thumbnail.png", png),
    ]


async def _serve(thumbnails: Thumbnails, request: web.Request, fmt: ImageFormat) -> web.Response:
    name = request.match_info["name"]
    try:
        width = parse_width(request.query.get("width"))
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        image = await thumbnails.render(name, fmt, width)
    except ThumbnailUnavailable as exc:
        headers = {"Retry-After": "1"} if STATUS[exc.kind] == 503 else None
        return _error(STATUS[exc.kind], exc.reason, headers)
    return web.Response(body=image.data, content_type=image.content_type, headers=NO_STORE)


def parse_width(text: str | None) -> int | None:
    """The ``width`` query parameter: absent or empty for the stream's own size."""
    if text is None or text == "":
        return None
    # int() alone would take " 42", "4_2" and "+42": only plain digits are a width.
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ValueError(f"width must be an integer from {MIN_WIDTH} to {MAX_WIDTH}, got {text[:20]!r}")
    return check_width(int(text))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)
