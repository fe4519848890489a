"""Edge authentication: every route but the probes and /metrics needs a token.

Two kinds, either or both configured:
- API tokens (`TOLK_API_TOKENS`): long-lived shared secrets for servers and trusted apps;
- signed tokens (`TOLK_TOKEN_SECRET`): standard JWTs (HS256, claims `sub` and `exp`), minted by your backend in
  any language (or `tolk token`) for a browser or phone, so the long-lived secret never reaches a device.
  Per-token session limits count per subject. The previous `v1.<payload>.<HMAC>` format is still accepted for
  this release (deprecated: logged once) and will be dropped in the next.

`Authorization: Bearer <token>` (or `Authorization: Token <token>`, as Deepgram's SDKs send it), or
`?token=<token>` for browsers, whose WebSocket API cannot set headers (prefer the header elsewhere: URLs end
up in proxy logs). Tokens are compared in constant time and never
logged. With neither configured the edge is open, which `tolk up` on a laptop wants; it says so loudly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import jwt
from aiohttp import web
from aiohttp.typedefs import Middleware

from edge.http import page

log = logging.getLogger("tolk.edge.auth")

TOKEN = web.RequestKey("token", str)  # who the request is (a limit key), set by the middleware
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: no secrets, no client data

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def parse_tokens(raw: str) -> tuple[bytes, ...]:
    return tuple(t.strip().encode() for t in raw.split(",") if t.strip())


def presented(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    if header[:6].lower() == "token ":  # Deepgram's SDKs
        return header[6:].strip()
    return request.query.get("token", "")


def token_ok(token: str, tokens: tuple[bytes, ...]) -> bool:
    given = token.encode()
    ok = False
    for t in tokens:  # no early exit: the time taken does not say which token nearly matched
        ok |= hmac.compare_digest(given, t)
    return ok


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(secret: str, subject: str, ttl_s: float, now: float | None = None) -> str:
    """A JWT (HS256) for `subject`, valid for `ttl_s` seconds."""
    issued = int(now or time.time())
    return jwt.encode({"sub": subject, "iat": issued, "exp": int(issued + ttl_s)}, secret, algorithm="HS256")


def looks_signed(token: str) -> bool:
    """A JWT (three base64url parts, the header a JSON object) or a legacy `v1.` token."""
    return token.startswith(("v1.", "eyJ")) and token.count(".") == 2


def verify(secret: str, token: str, now: float | None = None) -> str:
    """The subject of a JWT (HS256 only: `alg: none` and others are refused) or legacy `v1.` token, or
    TokenError (`invalid_token`, `token_expired`)."""
    if token.startswith("v1."):
        return verify_v1(secret, token, now)
    try:
        # Expiry is checked below against `now` (testable); PyJWT checks the signature and the claims' presence.
        claims = jwt.decode(token, secret, algorithms=["HS256"],
                            options={"require": ["sub", "exp"], "verify_exp": False, "verify_iat": False})
    except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
        raise TokenError("invalid_token", "the token is not valid") from None
    return _subject(claims, now)


def _subject(claims: object, now: float | None) -> str:
    """The subject of claims whose signature checked out: `sub` a non-empty string, `exp` a finite number
    (a NaN or infinite one, which JSON parsers accept, would never expire) still ahead."""
    subject = claims.get("sub") if isinstance(claims, dict) else None
    expires = claims.get("exp") if isinstance(claims, dict) else None
    if (not isinstance(subject, str) or not subject or isinstance(expires, bool)
            or not isinstance(expires, int | float) or not math.isfinite(expires)):
        raise TokenError("invalid_token", "the token is not valid")
    if expires <= (now or time.time()):
        raise TokenError("token_expired", "the token has expired: get a new one")
    return subject


_warned_v1 = False


def mint_v1(secret: str, subject: str, ttl_s: float, now: float | None = None) -> str:
    """The deprecated pre-JWT format (`v1.<payload>.<HMAC-SHA256>`), kept for tests of its last release."""
    payload = _b64(json.dumps({"sub": subject, "exp": int((now or time.time()) + ttl_s)},
                              separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"v1.{payload}".encode(), hashlib.sha256).digest()
    return f"v1.{payload}.{_b64(sig)}"


def verify_v1(secret: str, token: str, now: float | None = None) -> str:
    """A deprecated `v1.` token's subject, or TokenError (`invalid_token`, `token_expired`)."""
    global _warned_v1
    if not _warned_v1:
        _warned_v1 = True
        log.warning("a deprecated v1. client token was presented: mint JWTs (`tolk token`); v1. tokens are "
                    "refused from the next release")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != "v1":
        raise TokenError("invalid_token", "the token is not valid")
    expected = hmac.new(secret.encode(), f"v1.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        signature = _unb64(parts[2])
        if not hmac.compare_digest(signature, expected):
            raise TokenError("invalid_token", "the token is not valid")
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, KeyError, TypeError):
        raise TokenError("invalid_token", "the token is not valid") from None
    return _subject(claims, now)


@dataclass(frozen=True)
class Authenticator:
    tokens: tuple[bytes, ...] = ()
    secret: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.secret)

    def identify(self, token: str) -> str:
        """Who presents `token` (the per-token limit key), or TokenError."""
        if not token:
            raise TokenError("unauthorized", "a token is required: Authorization: Bearer <token>, or ?token=<token>")
        if self.secret and looks_signed(token):
            try:
                return "sub:" + verify(self.secret, token)
            except TokenError as err:  # an API token that happens to look like one still counts as one
                if err.code != "invalid_token" or not token_ok(token, self.tokens):
                    raise
        if token_ok(token, self.tokens):
            return "key:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        raise TokenError("invalid_token", "the token is not valid")


# A vendor adapter's own 401 body for its routes (OpenAI's, Deepgram's shape), or None for Tolk's.
Refusal = Callable[[web.Request, TokenError], web.Response | None]


def middleware(auth: Authenticator, refusals: tuple[Refusal, ...] = ()) -> Middleware:
    if not auth.enabled:
        log.warning("AUTHENTICATION IS OFF: anyone who can reach this edge can use it. Set TOLK_API_TOKENS "
                    "and/or TOLK_TOKEN_SECRET for anything but local development.")

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The page holds no data either: what it fetches and opens needs the token.
        if auth.enabled and request.path not in OPEN_PATHS and not page.is_page(request.path):
            try:
                request[TOKEN] = auth.identify(presented(request))
            except TokenError as err:
                log.info("%s %s: %s from %s", request.method, request.path, err.code, request.remote)
                for refuse in refusals:
                    if (shaped := refuse(request, err)) is not None:
                        return shaped
                return web.json_response({"error": {"code": err.code, "message": err.message}}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="tolk"'})
        return await handler(request)

    return check
