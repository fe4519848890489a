"""Edge process: aiohttp routes, NATS connection, graceful shutdown. Protocol lives in protocol.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from actors.runtime import channels, listeners, pools, settings, topology
from actors.runtime.actor import Actor, RuntimeSettings, heartbeats
from actors.runtime.bus import Bus
from edge import auth, errors, page
from edge.files import FileTranscriber
from edge.hub import ChannelHub
from edge.listener import ChannelListener
from edge.metrics import EdgeMetrics
from edge.protocol import ErrorCode, ProtocolError, Start
from edge.session import ClientSession, Limits
from edge.vendors import deepgram, openai, speechmatics
from schemas import (
    AudioChunk,
    ChannelRecord,
    DecodeError,
    IngestLease,
    SessionRecord,
    decode,
    encode,
)

log = logging.getLogger("tolk.edge")

REQUIRED_ACTORS = ("segmenter", "stt", "translator", "fanout")
SESSIONS = "tolk_sessions"  # KV: SessionRecord per session id


@dataclass
class EdgeSettings:
    """Env: TOLK_HOST, TOLK_PORT, TOLK_MAX_FRAME_BYTES, ... (README "Configuration")."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_frame_bytes: int = 1 << 20
    idle_timeout_s: float = 30.0
    stop_timeout_s: float = 60.0  # after `stop`, how long to wait for the last final
    result_queue: int = 256
    ws_heartbeat_s: float = 20.0
    sse_ping_s: float = 15.0  # a `: ping` comment on event streams silent this long (proxies cut idle ones)
    shutdown_grace_s: float = 5.0
    max_upload_bytes: int = 200 * 1024 * 1024  # file transcription: larger uploads get 413
    upload_dir: str = ""  # where uploads wait while being transcribed (default: the system temp dir)
    file_pace: float = 10.0  # files enter the pipeline at most this many times faster than real time
    file_result_timeout_s: float = 120.0  # a file job fails (504) if the pipeline is silent this long
    file_jobs: int = 4  # files transcribed at once by this edge; more get 503 "busy"
    tls_cert: str = ""  # PEM certificate (chain) file: with tls_key, the edge serves only HTTPS / WSS
    tls_key: str = ""  # its PEM private key file
    max_sessions: int = 0  # microphone sessions on this edge at once (0: no limit); more get `overloaded` (1013)
    max_sessions_per_token: int = 0  # microphone sessions at once per API token on this edge (0: no limit)
    shed_backlog: int = 100  # finals waiting for the session's STT pool (stt-final-<pool> lag): refuse above this
    max_session_s: float = 14400.0  # a session's longest life, resumes included (0: no limit)
    resume_grace_s: float = 30.0  # a dropped client's session waits this long for a resume before it is ended
    api_tokens: str = field(default="", repr=False)  # comma-separated; with token_secret empty too: no authentication
    token_secret: str = field(default="", repr=False)  # signs expiring tokens (`tolk token`); empty: none


class Edge(Actor):
    name = "edge"
    serves_ops = True

    def __init__(self, bus: Bus, runtime: RuntimeSettings, cfg: EdgeSettings, topo: topology.Topology) -> None:
        super().__init__(bus, runtime)
        self.cfg = cfg
        self.partitions = topo.partitions
        self.instance = runtime.instance
        self.sessions: dict[str, ClientSession] = {}
        self.listeners: set[ChannelListener] = set()
        self.hub = ChannelHub(bus)
        self.metrics = EdgeMetrics()
        self.files = FileTranscriber(self)
        self.limits = Limits(cfg.max_frame_bytes, cfg.idle_timeout_s, cfg.stop_timeout_s, cfg.result_queue,
                             cfg.max_session_s)
        self.accepting = True
        self._stopped = asyncio.Event()
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()
        self._runner: web.AppRunner | None = None
        self._ready_cache: tuple[float, dict[str, int]] = (0.0, {})
        self._ending: dict[str, asyncio.Task[None]] = {}
        self.stt_pools = pools.load()  # a new session is shed on the backlog of the pool its language goes to
        self._backlog: dict[str, tuple[float, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # detached sessions waiting out the resume grace
        self.app = web.Application(client_max_size=cfg.max_frame_bytes,
                                   middlewares=[errors.json_errors, auth.middleware(auth.Authenticator(
                                       auth.parse_tokens(cfg.api_tokens), cfg.token_secret),
                                       refusals=(openai.refusal, deepgram.refusal))])
        self.app.add_routes([
            web.get("/v1/listen", self.listen),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/v1/channels", self.list_channels),
            web.post("/v1/transcriptions", self.files.upload),
            web.get("/v1/transcriptions/ws", self.files.websocket),
            web.get("/v1/sessions/{session_id}/transcript", self.files.export),
            web.get("/metrics", self.metrics_route),
            *openai.routes(self),  # OpenAI's audio API: /v1/audio/transcriptions, /v1/audio/translations
            *deepgram.routes(self),  # Deepgram's pre-recorded POST /v1/listen (its live one: `listen` below)
            *speechmatics.routes(self),  # Speechmatics realtime: /v2, /v2/<language>
        ])
        page.install(self.app)

    # ------------------------------------------------------------------ lifecycle
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
        refresh = asyncio.create_task(self._refresh_listeners(), name="edge.listeners")
        try:
            await self._stopped.wait()
        finally:
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresh

    async def _refresh_listeners(self) -> None:
        """Keeps live listeners' KV records from expiring; a dead edge's records expire by TTL."""
        while True:
            await asyncio.sleep(listeners.REFRESH_S)
            for session in list(self.sessions.values()):
                await session.announce()
            for listener in list(self.listeners):
                await listener.announce()

    async def drain(self) -> None:
        """Refuse new sessions, give open ones a short grace, then tell the rest to reconnect."""
        self.accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_sessions.wait(), self.cfg.shutdown_grace_s)
        for session in list(self.sessions.values()):
            await session.fail(ProtocolError(ErrorCode.SHUTTING_DOWN, "server restarting; reconnect"))
        for listener in list(self.listeners):
            await listener.fail(ProtocolError(ErrorCode.SHUTTING_DOWN, "server restarting; reconnect"))
        self._stopped.set()

    def ops_port(self) -> int:
        return self.cfg.port

    def background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task owned by the edge (kept referenced until done, awaited on close)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def admit(self, token: str = "", language: str = "auto") -> None:
        """Load shedding for new microphone sessions: refusing one is better than every session falling behind.
        A resume is never refused here: it is a session already admitted."""
        per_token = self.cfg.max_sessions_per_token
        if token and per_token and sum(1 for s in self.sessions.values() if s.token == token) >= per_token:
            raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, f"this API token already has {per_token} sessions "
                                "streaming here")
        if self.cfg.max_sessions and len(self.sessions) >= self.cfg.max_sessions:
            raise ProtocolError(ErrorCode.OVERLOADED, f"this server is at its limit of {self.cfg.max_sessions} "
                                "sessions; try again shortly")
        backlog = await self.stt_backlog(language)
        if self.cfg.shed_backlog and backlog > self.cfg.shed_backlog:
            raise ProtocolError(ErrorCode.OVERLOADED, f"speech recognition is {backlog} utterances behind; try "
                                "again shortly")

    async def stt_backlog(self, language: str = "auto") -> int:
        """Finals not yet handed to any STT replica of the pool serving `language` (cached 2 s per pool; 0 if
        NATS cannot say)."""
        pool = self.stt_pools.route(language).name
        at, value = self._backlog.get(pool, (0.0, 0))
        if time.monotonic() - at < 2.0:
            return value
        try:
            info = await self.bus.js.consumer_info("TOLK_SEGMENTS", pools.durable("final", pool))
            value = int(info.num_pending or 0)
        except Exception as exc:
            log.warning("stt backlog of pool %s unknown: %s", pool, exc)
            value = 0
        self._backlog[pool] = (time.monotonic(), value)
        return value

    def end_later(self, sid: str, epoch: int, partition: int, start: Start | None) -> None:
        """A dropped client's session: ended after the resume grace unless a resume (on any edge) claimed it."""
        if start is None:
            return
        self.cancel_end(sid)
        self._ending[sid] = asyncio.create_task(self._end_detached(sid, epoch, partition, start),
                                                name=f"edge.detached.{sid}")

    def cancel_end(self, sid: str) -> None:
        task = self._ending.pop(sid, None)
        if task is not None:
            task.cancel()

    async def sessions_kv(self) -> KeyValue:
        return await self.bus.kv(SESSIONS)

    async def session_record(self, sid: str) -> tuple[KeyValue, SessionRecord | None, int | None]:
        """A session's KV record and its revision, for compare-and-set updates (None, None: none, or unreadable)."""
        kv = await self.sessions_kv()
        try:
            entry = await kv.get(sid)
            return kv, (decode(entry.value, SessionRecord) if entry.value else None), entry.revision
        except (KeyNotFoundError, KeyDeletedError, DecodeError):
            return kv, None, None

    async def _end_detached(self, sid: str, epoch: int, partition: int, start: Start) -> None:
        try:
            await asyncio.sleep(self.cfg.resume_grace_s)
            kv, rec, revision = await self.session_record(sid)
            if rec is None or rec.epoch != epoch or rec.status != "detached":
                return  # resumed (or ended) meanwhile
            await kv.update(sid, encode(msgspec.structs.replace(rec, status="closed", updated_at=time.time())),
                            last=revision)
            # Numbered past anything that connection could have sent: the segmenter flushes and ends it.
            await self.bus.publish_audio(AudioChunk(
                session_id=sid, chunk_seq=(epoch << 32) + (1 << 31), sample_rate=start.sample_rate,
                encoding=start.encoding, language=start.language, data=b"", received_at=time.time(), end=True,
            ), partition)
            with contextlib.suppress(Exception):
                await listeners.remove_listener(await self.bus.kv(listeners.BUCKET), sid, "owner")
            log.info("%s: not resumed within %.0f s; ended", sid, self.cfg.resume_grace_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # KV or NATS away: the pipeline reaps the idle session later anyway
            log.warning("%s: detached session not ended: %s", sid, exc)
        finally:
            if self._ending.get(sid) is asyncio.current_task():
                del self._ending[sid]

    async def close(self) -> None:
        for task in list(self._ending.values()):  # left detached: resumable on another edge
            task.cancel()
        if self._tasks:  # connection clean-ups still writing their records
            await asyncio.wait(list(self._tasks), timeout=10)
        if self._runner:
            await self._runner.cleanup()

    def register(self, session: ClientSession) -> None:
        self.sessions[session.session_id] = session
        self._no_sessions.clear()

    def unregister(self, session: ClientSession) -> None:
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
        if not self.sessions:
            self._no_sessions.set()

    # ------------------------------------------------------------------ routes
    async def listen(self, request: web.Request) -> web.StreamResponse:
        if deepgram.is_deepgram(request):  # Deepgram's query settings / `Authorization: Token`: its protocol
            return await deepgram.listen(self, request, request.get(auth.TOKEN, ""))
        ws = self.client_socket()
        await ws.prepare(request)
        return await self.serve_client(ws, ClientSession(self, ws, self.limits, token=request.get(auth.TOKEN, "")),
                                       request)

    def client_socket(self) -> web.WebSocketResponse:
        # aiohttp closes an over-limit frame itself (1009) before we could explain why, so its
        # limit sits well above ours: up to 4x the limit gets a JSON `frame_too_large` first.
        return web.WebSocketResponse(max_msg_size=self.cfg.max_frame_bytes * 4 + 4096,
                                     heartbeat=self.cfg.ws_heartbeat_s)

    async def serve_client(self, ws: web.WebSocketResponse, session: ClientSession,
                           request: web.Request) -> web.WebSocketResponse:
        """Every client protocol's session (Tolk's and the vendors'): refused while shutting down, counted."""
        if not self.accepting:
            await session.fail(ProtocolError(ErrorCode.SHUTTING_DOWN, "server restarting; reconnect"))
            return ws
        self.metrics.connected_clients.inc()
        try:
            subscribe = await session.serve()
            if subscribe is not None:
                await ChannelListener(self, ws, self.cfg.result_queue, request.transport).serve(subscribe)
        finally:
            self.metrics.connected_clients.dec()
        return ws

    async def channel(self, name: str) -> ChannelRecord | None:
        try:
            entry = await (await self.bus.kv(channels.BUCKET)).get(name)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if not entry.value:
            return None
        try:
            return decode(entry.value, ChannelRecord)
        except DecodeError:
            return None

    async def list_channels(self, request: web.Request) -> web.Response:
        out = []
        leases = await self.bus.kv(channels.LEASES)
        for key in await self.bus.kv_keys(channels.BUCKET):
            record = await self.channel(key)
            if record is None:
                continue
            lease = None
            with contextlib.suppress(Exception):
                entry = await leases.get(key)
                lease = decode(entry.value, IngestLease) if entry.value else None
            out.append({"name": record.name, "title": record.title, "language": record.language,
                        "targets": list(record.targets), "live": lease is not None,
                        "session_id": lease.session_id if lease else None,
                        "listeners_here": self.hub.listeners(record.name)})
        return web.json_response({"channels": out})

    async def metrics_route(self, request: web.Request) -> web.Response:
        self.metrics.refresh(self)
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        alive = await self._alive_actors()
        missing = [a for a in REQUIRED_ACTORS if not alive.get(a)]
        ok = self.accepting and self.bus.nc.is_connected and not missing
        body = {"ready": ok, "nats": self.bus.nc.is_connected, "actors": alive, "missing": missing,
                "sessions": len(self.sessions)}
        return web.json_response(body, status=200 if ok else 503)

    async def _alive_actors(self) -> dict[str, int]:
        """Ready actor instances by name, from heartbeats in KV (cached for 2 s)."""
        at, counts = self._ready_cache
        if time.monotonic() - at < 2.0:
            return counts
        counts = {}
        with contextlib.suppress(Exception):
            for beat in await heartbeats(self.bus):
                if beat.ready:
                    counts[beat.actor] = counts.get(beat.actor, 0) + 1
        self._ready_cache = (time.monotonic(), counts)
        return counts


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """Server TLS (1.2 and up) from PEM files; a half-configured or unreadable pair stops the edge at start."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise SystemExit("edge: TLS needs both TOLK_TLS_CERT and TOLK_TLS_KEY")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"edge: cannot load TLS certificate {cert!r} / key {key!r}: {exc}") from None
    return ctx


async def create(bus: Bus, runtime: RuntimeSettings) -> Actor:
    return Edge(bus, runtime, settings.load(EdgeSettings), topology.load())
