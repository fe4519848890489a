"""The one WebSocket loop every streaming API runs: a `LiveSession` driven by frames, results written back.

A transport subclasses `SocketSession` and implements its wire format only: `on_text` / `on_binary` turn frames
into the session's commands, `error_body` / `send_started` / `send_result` turn what happens into frames. The
reading (idle and drain timeouts, oversized frames, a client gone), the writing (results in order, each once,
the close after the last), error reporting (counted once) and the clean-up that must outlive a cancelled
handler are here, once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from edge.core.commands import Start
from edge.core.errors import Close, ErrorCode, ProtocolError
from edge.core.live import LiveSession, Phase, Started
from edge.core.services import Services
from schemas import ClientResult, ResultKind

log = logging.getLogger("tolk.edge.socket")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def accept(services: Services) -> web.WebSocketResponse:
    """A client socket. aiohttp closes an over-limit frame itself (1009) before we could explain why, so its
    limit sits well above ours: up to 4x the limit gets the API's `frame_too_large` error first."""
    cfg = services.cfg
    return web.WebSocketResponse(max_msg_size=cfg.max_frame_bytes * 4 + 4096, heartbeat=cfg.ws_heartbeat_s)


class SocketSession(abc.ABC):
    resumable = True  # a dropped client may resume its session (the API has a way to)
    idle_what = "message"  # "no <idle_what> for 30 s"

    def __init__(self, services: Services, ws: web.WebSocketResponse, token: str = "") -> None:
        self.services = services
        self.ws = ws
        self.token = token
        self.live = LiveSession(services, token, self.fail, self.resumable)
        self.limits = self.live.limits
        self._writer: asyncio.Task[None] | None = None
        self.handed_over = False  # the socket now belongs to something else (a native channel listener)

    @property
    def session_id(self) -> str:
        return self.live.session_id

    @property
    def phase(self) -> Phase:
        return self.live.phase

    # ------------------------------------------------------------------ what a transport implements
    async def opened(self) -> None:  # noqa: B027 (a hook most transports leave empty)
        """Before the first frame is read (an API whose URL carries the settings starts the session here)."""

    @abc.abstractmethod
    async def on_text(self, text: str) -> object | None:
        """A text frame. Returning something other than None ends the session's reading and hands the socket
        over: `serve` returns it."""

    @abc.abstractmethod
    async def on_binary(self, data: bytes) -> None:
        """A binary frame."""

    @abc.abstractmethod
    def error_body(self, err: ProtocolError) -> dict[str, Any]:
        """`err` as this API reports it."""

    @abc.abstractmethod
    async def send_started(self, started: Started) -> None:
        """The session began (or resumed)."""

    @abc.abstractmethod
    async def send_result(self, result: ClientResult, targets: tuple[str, ...]) -> None:
        """A result, with the translations this client asked for (the END too: the socket closes after it)."""

    def translate(self, err: ProtocolError) -> ProtocolError:
        """`err` in this API's own terms (its close code, say)."""
        return err

    # ------------------------------------------------------------------ what a transport calls
    async def begin(self, start: Start) -> None:
        await self.live.begin(start, self.send_started)

    async def fail(self, err: ProtocolError) -> None:
        """Reports `err`; closes the connection where its code says so, else the session goes on."""
        err = self.translate(err)
        log.info("%s: %s (%s)", self.live.session_id or "pre-start", err.code.value, err.message)
        self.services.metrics.error(err.code.value)
        if self.ws.closed:
            return
        with contextlib.suppress(Exception):
            await self.ws.send_json(self.error_body(err))
        if err.close is not None:
            self.live.phase = Phase.CLOSED
            with contextlib.suppress(Exception):
                await self.ws.close(code=err.close, message=err.code.value.encode())

    # ------------------------------------------------------------------ the loop
    async def serve(self) -> object | None:
        """Runs the connection to its end; what `on_text` handed over, if it did."""
        self._writer = asyncio.create_task(self._write_loop(), name="edge.write")
        try:
            await self.opened()
            return await self._read_loop()
        except ProtocolError as err:
            await self.fail(err)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.live.detach = True
        except Exception:
            log.exception("%s: internal error", self.live.session_id or "session")
            await self.fail(ProtocolError(ErrorCode.INTERNAL, "internal error; please reconnect"))
        finally:
            # aiohttp cancels a handler whose client went away: the clean-up (KV writes, ending or detaching the
            # session) must finish anyway, so it runs as a task of the edge's own.
            await asyncio.shield(self.services.background(self._cleanup()))
        return None

    async def _read_loop(self) -> object | None:
        while self.live.phase is not Phase.CLOSED:
            draining = self.live.phase is Phase.DRAINING
            timeout = self.limits.stop_timeout_s if draining else self.limits.idle_timeout_s
            try:
                msg = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                if draining:
                    raise ProtocolError(ErrorCode.DRAIN_TIMEOUT, "results did not complete in time") from None
                raise ProtocolError(ErrorCode.IDLE_TIMEOUT, f"no {self.idle_what} for {timeout:.0f} s") from None
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self.on_binary(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                handed = await self.on_text(msg.data)
                if handed is not None:
                    self.handed_over = True
                    return handed
            elif msg.type == aiohttp.WSMsgType.ERROR:
                exc = self.ws.exception()
                if isinstance(exc, aiohttp.WebSocketError) and exc.code == Close.TOO_BIG:
                    raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame exceeds {self.limits.max_frame_bytes} bytes")
                self.live.detach = True
                return None
            else:  # CLOSE / CLOSING / CLOSED: gone without saying so
                self.live.detach = True
                return None
            if self.live.done.is_set():
                return None
        return None

    async def _write_loop(self) -> None:
        while True:
            result = await self.live.next_result()
            await self.send_result(result, self.live.wanted(result))
            if result.kind is ResultKind.END:
                code, reason = self.live.closing
                await self.ws.close(code=code, message=reason)
                return

    async def _cleanup(self) -> None:
        await self.live.close()
        if self._writer:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        if not self.ws.closed and not self.handed_over:
            with contextlib.suppress(Exception):
                await self.ws.close()


async def serve(request: web.Request, ws: web.WebSocketResponse, session: SocketSession,
                then: Callable[[object], Awaitable[None]] | None = None) -> web.WebSocketResponse:
    """Every streaming API's connection: refused while shutting down, counted while open. `then` takes over a
    socket the session handed over."""
    await ws.prepare(request)
    if not session.services.registry.accepting:
        await session.fail(ProtocolError(ErrorCode.SHUTTING_DOWN, "server restarting; reconnect"))
        return ws
    gauge = session.services.metrics.connected_clients
    gauge.inc()
    try:
        handed = await session.serve()
        if handed is not None and then is not None:
            await then(handed)
    finally:
        gauge.dec()
    return ws
