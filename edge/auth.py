"""API tokens for the edge: every route but the probes and /metrics needs one.

`Authorization: Bearer <token>`, or `?token=<token>` for browsers, whose WebSocket API cannot set headers
(prefer the header elsewhere: URLs end up in proxy logs). Tokens are compared in constant time and never
logged. With no tokens configured the edge is open, which `tolk up` on a laptop wants; it says so loudly.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

log = logging.getLogger("tolk.edge.auth")

TOKEN = web.RequestKey("token", str)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: no secrets, no client data

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_tokens(raw: str) -> tuple[bytes, ...]:
    return tuple(t.strip().encode() for t in raw.split(",") if t.strip())


def presented(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.query.get("token", "")


def token_ok(token: str, tokens: tuple[bytes, ...]) -> bool:
    given = token.encode()
    ok = False
    for t in tokens:  # no early exit: the time taken does not say which token nearly matched
        ok |= hmac.compare_digest(given, t)
    return ok


def middleware(tokens: tuple[bytes, ...]) -> Middleware:
    if not tokens:
        log.warning("AUTHENTICATION IS OFF: anyone who can reach this edge can use it. Set TOLK_API_TOKENS "
                    "(comma-separated) for anything but local development.")

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if tokens and request.path not in OPEN_PATHS:
            token = presented(request)
            request[TOKEN] = token  # for per-token limits; never logged
            if not token_ok(token, tokens):
                code = "invalid_token" if token else "unauthorized"
                message = ("the API token is not valid" if token else
                           "an API token is required: Authorization: Bearer <token>, or ?token=<token>")
                log.info("%s %s: %s from %s", request.method, request.path, code, request.remote)
                return web.json_response({"error": {"code": code, "message": message}}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="tolk"'})
        return await handler(request)

    return check
