"""Tolk's own HTTP API: the live WebSocket, channels, files, probes and metrics, and how its errors look."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from edge.core.commands import Subscribe
from edge.core.errors import ApiError
from edge.core.services import Services
from edge.http import auth
from edge.transports import socket
from edge.transports.native.files import FileRoutes
from edge.transports.native.hub import ChannelHub
from edge.transports.native.listener import ChannelListener
from edge.transports.native.session import NativeSession

REQUIRED_ACTORS = ("segmenter", "stt", "translator", "fanout")

# Another API's live WebSocket at `/v1/listen` (Deepgram's): claims a request, and serves it.
Claim = tuple[Callable[[web.Request], bool], Callable[[web.Request], Awaitable[web.StreamResponse]]]


def render_error(request: web.Request, err: ApiError) -> web.Response:
    """Tolk's (and OpenAI-style) error body; `busy` says when to try again."""
    headers = {"Retry-After": "10"} if err.status == 503 else None
    return web.json_response({"error": {"message": err.message, "type": "invalid_request_error", "code": err.code}},
                             status=err.status, headers=headers)


class NativeRoutes:
    def __init__(self, services: Services, others: tuple[Claim, ...] = ()) -> None:
        self.services = services
        self.hub = ChannelHub(services.bus, services.pipeline)
        self.others = others

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/listen", self.listen),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/v1/channels", self.list_channels),
            web.get("/v1/languages", self.languages),
            web.get("/metrics", self.metrics),
            *FileRoutes(self.services).routes(),
        ]

    async def listen(self, request: web.Request) -> web.StreamResponse:
        for claims, serve in self.others:
            if claims(request):
                return await serve(request)
        ws = socket.accept(self.services)
        session = NativeSession(self.services, ws, token=request.get(auth.TOKEN, ""))

        async def listener(subscribe: object) -> None:
            assert isinstance(subscribe, Subscribe)
            await ChannelListener(self.services, self.hub, ws, request.transport).serve(subscribe)

        return await socket.serve(request, ws, session, then=listener)

    async def list_channels(self, request: web.Request) -> web.Response:
        out = []
        channels = self.services.channels
        for key in await channels.names():
            record = await channels.get(key)
            if record is None:
                continue
            lease = await channels.lease(key)
            out.append({"name": record.name, "title": record.title, "language": record.language,
                        "targets": list(record.targets), "live": lease is not None,
                        "session_id": lease.session_id if lease else None,
                        "listeners_here": self.hub.listeners(record.name)})
        return web.json_response({"channels": out})

    async def languages(self, request: web.Request) -> web.Response:
        """The translation pairs served now (by which engine, quality where measured), and engines that are not
        there with why: what a `start`'s `targets` are checked against."""
        return web.json_response(await self.services.translations.languages())

    async def metrics(self, request: web.Request) -> web.Response:
        metrics = self.services.metrics
        metrics.refresh(self.services.registry)
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        s = self.services
        alive = await self._alive_actors()
        missing = [a for a in REQUIRED_ACTORS if not alive.get(a)]
        ok = s.registry.accepting and s.bus.nc.is_connected and not missing
        body = {"ready": ok, "nats": s.bus.nc.is_connected, "actors": alive, "missing": missing,
                "sessions": len(s.registry.sessions)}
        return web.json_response(body, status=200 if ok else 503)

    async def _alive_actors(self) -> dict[str, int]:
        """Ready actor instances by name, from the edge's heartbeat read (at most 2 s old)."""
        counts: dict[str, int] = {}
        with contextlib.suppress(Exception):
            for beat in await self.services.beats.read():
                if beat.ready:
                    counts[beat.actor] = counts.get(beat.actor, 0) + 1
        return counts
