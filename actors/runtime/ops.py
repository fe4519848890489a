"""Each actor's operations endpoint: `/metrics`, `/healthz` (the process answers) and `/readyz` (connected
to NATS and started: models loaded, consumers bound). Kubernetes probes and Prometheus read it; the edge
serves the same routes on its own port instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("tolk.ops")


class OpsServer:
    def __init__(self, name: str, ready: Callable[[], tuple[bool, dict[str, bool]]]) -> None:
        self.name = name
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.add_routes([web.get("/metrics", self._metrics), web.get("/healthz", self._healthz),
                        web.get("/readyz", self._readyz)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        log.info("%s: metrics and probes on http://%s:%d", self.name, host, self.port)
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "actor": self.name})

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, checks = self._ready()
        return web.json_response({"status": "ready" if ok else "not ready", "actor": self.name, "checks": checks},
                                 status=200 if ok else 503)
