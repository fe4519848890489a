"""The API answers in JSON, its errors included, rendered in one place.

Handlers raise; this middleware renders (starlette's exception handlers). An API error is shaped by the first
API family that claims the request (OpenAI's and Deepgram's routes answer in their vendors' shapes), else Tolk's
own, and counted once. aiohttp's own refusals (no such route, wrong method, a body over `client_max_size`) are
plain text; they get Tolk's JSON too. The page's static files keep aiohttp's answers: a browser reads those.

A leaf: it knows no error type of the edge's, only what the app hands it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware

from edge.http import page
from edge.http.auth import Handler

CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}

E = TypeVar("E", bound=Exception)


class Renderers(Generic[E]):
    """How errors of type `kind` are rendered: the first family whose renderer answers, else `default`."""

    def __init__(self, kind: type[E], families: Sequence[Callable[[web.Request, E], web.Response | None]],
                 default: Callable[[web.Request, E], web.Response], count: Callable[[E], None]) -> None:
        self.kind, self.families, self.default, self.count = kind, tuple(families), default, count

    def render(self, request: web.Request, err: E) -> web.Response:
        self.count(err)
        for family in self.families:
            if (shaped := family(request, err)) is not None:
                return shaped
        return self.default(request, err)


def middleware(renderers: Renderers[E]) -> Middleware:
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
            return web.json_response({"error": {"code": code, "message": message}}, status=exc.status,
                                     headers=headers)
        except renderers.kind as err:
            return renderers.render(request, err)

    return json_errors
