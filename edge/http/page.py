"""The browser page at `/`: plain ES modules from edge/static, no build step and nothing from a CDN.

The page holds no data of its own, so it is served without a token; everything it fetches or opens (the
WebSocket, uploads, exports) goes through the same authentication as any other client.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parents[1] / "static"

# Only this origin: no CDN, no third-party script, the microphone for this page alone.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag / Last-Modified): an upgraded edge serves its own page at once
}


# The page's files, listed once: a request names one of these or gets 404, so no spelling of a path (`..`,
# encoded slashes, names too long for the file system) ever reaches the file system.
FILES = {f.relative_to(STATIC).as_posix(): f for f in STATIC.rglob("*") if f.is_file()}


def install(app: web.Application) -> None:
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name:.+}", _static)
    app.on_response_prepare.append(_headers)


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def _static(request: web.Request) -> web.StreamResponse:
    path = FILES.get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def is_page(path: str) -> bool:
    """The page and its own files: served without a token (auth.py) and with the headers above."""
    return path == "/" or path.startswith("/static/")


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    if is_page(request.path):
        response.headers.update(HEADERS)
