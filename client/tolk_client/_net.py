"""URLs, headers and retry delays shared by the client's connections."""

from __future__ import annotations

import random


def ws_url(base: str, path: str = "/v1/listen") -> str:
    """`http://host:8080`, `ws://host:8080` or a full `…/v1/listen` URL → the WebSocket URL of `path`."""
    url = base.rstrip("/")
    if url.startswith("http"):
        url = "ws" + url[4:]
    return url if url.endswith(path) else url + path


def http_url(base: str, path: str) -> str:
    url = base.rstrip("/")
    if url.startswith("ws"):
        url = "http" + url[2:]
    if url.endswith("/v1/listen"):
        url = url[: -len("/v1/listen")]
    return url + path


def headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def retry_delay(attempt: int, base: float = 0.25, cap: float = 5.0) -> float:
    """0.25 s doubling to 5 s, half of each step random (as the page and the server's own retries): a crowd of
    clients that lost the same edge does not come back as one wave."""
    step = min(cap, base * 2.0 ** min(attempt, 20))
    return step / 2 + random.random() * step / 2
