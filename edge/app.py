"""The edge process: composition only. It builds the core services, mounts each API's routes, renders errors in
one place, and runs the actor's lifecycle (listen, refresh records, drain on SIGTERM). It knows no endpoint and
no wire format: those are edge/transports/'s; what they share is edge/core/'s (docs/architecture.md#the-edge)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os

from aiohttp import web

from actors.runtime import settings, topology
from actors.runtime.actor import Actor, RuntimeSettings
from actors.runtime.bus import Bus
from edge.core.errors import ApiError
from edge.core.services import Services
from edge.http import auth, errors, page
from edge.settings import EdgeSettings, tls_context
from edge.transports import deepgram, openai, openai_realtime, speechmatics
from edge.transports.native.routes import NativeRoutes, render_error

log = logging.getLogger("tolk.edge")

__all__ = ["Edge", "EdgeSettings", "create", "tls_context"]


class Edge(Actor):
    name = "edge"
    serves_ops = True

    def __init__(self, bus: Bus, runtime: RuntimeSettings, cfg: EdgeSettings, topo: topology.Topology) -> None:
        super().__init__(bus, runtime)
        self.cfg = cfg
        self.services = Services.build(bus, cfg, runtime.instance, topo.partitions)
        self._stopped = asyncio.Event()
        self._runner: web.AppRunner | None = None
        s = self.services
        authenticate = auth.middleware(auth.Authenticator(auth.parse_tokens(cfg.api_tokens), cfg.token_secret),
                                       refusals=(openai.refusal, openai_realtime.refusal, deepgram.refusal))
        render = errors.Renderers(ApiError, (openai.render_error, openai_realtime.render_error, deepgram.render_error),
                                  render_error, lambda err: s.metrics.error(err.code))
        self.app = web.Application(client_max_size=cfg.max_frame_bytes,
                                   middlewares=[errors.middleware(render), authenticate])
        native = NativeRoutes(s, others=((deepgram.is_deepgram, deepgram.live(s)),))  # Deepgram's live /v1/listen
        self.app.add_routes([
            *native.routes(),  # /v1/listen, /v1/channels, /v1/transcriptions…, /healthz, /readyz, /metrics
            *openai.routes(s),  # OpenAI's audio API: /v1/audio/transcriptions, /v1/audio/translations
            *openai_realtime.routes(s),  # OpenAI Realtime transcription sessions: /v1/realtime (WebSocket)
            *deepgram.routes(s),  # Deepgram's pre-recorded POST /v1/listen
            *speechmatics.routes(s),  # Speechmatics realtime and voice agents: /v2/agent, /v2, /v2/<language>
        ])
        page.install(self.app)

    async def start(self) -> None:
        # Thousands of listeners make a large long-lived heap that full collections keep rescanning. Freezing
        # the start-up heap and collecting less eagerly took the p99 delivery lag at 2,000 listeners from
        # 157-175 ms to 138-142 ms (two runs each of `loadtest.broadcast --synthetic`, 30 s hold).
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
        if self.cfg.upload_dir:
            os.makedirs(self.cfg.upload_dir, exist_ok=True)
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        tls = tls_context(self.cfg.tls_cert, self.cfg.tls_key)
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            raise SystemExit(f"edge: cannot listen on {self.cfg.host}:{self.cfg.port}: {exc.strerror}") from None
        log.info("edge listening on %s://%s:%d", "https" if tls else "http", self.cfg.host, self.cfg.port)

    async def run(self) -> None:
        refresh = asyncio.create_task(self.services.registry.refresh_forever(), name="edge.listeners")
        try:
            await self._stopped.wait()
        finally:
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresh

    async def drain(self) -> None:
        await self.services.registry.drain(self.cfg.shutdown_grace_s)
        self._stopped.set()

    def ops_port(self) -> int:
        return self.cfg.port

    async def close(self) -> None:
        await self.services.close()
        if self._runner:
            await self._runner.cleanup()


async def create(bus: Bus, runtime: RuntimeSettings) -> Actor:
    return Edge(bus, runtime, settings.load(EdgeSettings), topology.load())
