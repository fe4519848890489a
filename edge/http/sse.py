"""Server-sent events that survive reverse proxies: nginx-style ingresses buffer a response unless told not to
(`X-Accel-Buffering: no`) and cut one that is silent longer than their read timeout, so a `: ping` comment goes
out whenever nothing else has for `ping_s` (a long silence in an upload produces no events)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from types import TracebackType
from typing import Any

from aiohttp import web

HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: Any, name: str | None = None) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class EventStream:
    """`async with EventStream(request, ping_s) as sse: await sse.send(event(...))`; the pinger is owned and
    cancelled on exit. A client gone away ends the pings quietly; the caller's next `send` raises."""

    def __init__(self, request: web.Request, ping_s: float = 15.0) -> None:
        self.request = request
        self.ping_s = ping_s
        self.response = web.StreamResponse(headers=HEADERS)
        self._last = time.monotonic()
        self._lock = asyncio.Lock()
        self._pinger: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStream:
        await self.response.prepare(self.request)
        if self.ping_s > 0:
            self._pinger = asyncio.create_task(self._ping(), name="sse-ping")
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._pinger:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger

    async def send(self, data: bytes) -> None:
        async with self._lock:
            await self.response.write(data)
            self._last = time.monotonic()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self._last + self.ping_s - time.monotonic()))
            if time.monotonic() - self._last >= self.ping_s:
                try:
                    await self.send(b": ping\n\n")
                except (ConnectionError, RuntimeError):
                    return
