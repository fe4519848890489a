"""The API answers in JSON, its errors included.

aiohttp's own refusals (no such route, wrong method, a body over `client_max_size`) are plain text; a client
that parses `{"error": {"code", "message"}}` from every other failure would choke on them. The page's static
files keep aiohttp's answers: a browser reads those.
"""

from __future__ import annotations

from aiohttp import web

from edge import page
from edge.auth import Handler

CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or page.is_page(request.path):
            raise
        code = CODES.get(exc.status, "bad_request" if exc.status < 500 else "internal_error")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.json_response({"error": {"code": code, "message": message}}, status=exc.status, headers=headers)
