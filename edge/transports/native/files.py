"""Tolk's file routes: `POST /v1/transcriptions` (OpenAI-style multipart; `stream=true` for server-sent events),
`GET /v1/transcriptions/ws` (upload over a WebSocket, results as on /v1/listen) and
`GET /v1/sessions/{id}/transcript` (SRT / WebVTT / text / json of any finished session, from JetStream)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import aiohttp
from aiohttp import web

from edge.core.commands import check_channels, parse_language, parse_targets
from edge.core.errors import ApiError, Close, ErrorCode, ProtocolError
from edge.core.files import FileJobs, channel_cue, check_count
from edge.core.services import Services
from edge.http import auth
from edge.http.formats import DIARIZED, FORMATS, Cue, render
from edge.http.sse import EventStream, event
from edge.transports import socket, upload
from edge.transports.native.codec import render_result
from schemas import ResultKind

_SESSION = re.compile(r"^[A-Za-z0-9_=-]{1,80}$")
WS_CLOSE = {413: Close.TOO_BIG, 415: Close.UNSUPPORTED_DATA, 503: Close.TRY_AGAIN}  # an upload's HTTP status


def _channels(value: str) -> int:
    """The form's `channels`: 1-8, as a live `start`'s (checked by the same code); with more than one, the file
    must have that many (checked once it is probed)."""
    count: object = value
    with contextlib.suppress(ValueError):
        count = int(value)
    try:
        return check_channels(count, ErrorCode.UNSUPPORTED_CHANNELS)
    except ProtocolError as err:
        raise ApiError(400, err.code.value, err.message, "channels") from None


def _options(fields: dict[str, str]) -> tuple[str, str, bool, tuple[str, ...], bool]:
    fmt = fields.get("response_format", "json")
    if fmt not in FORMATS:
        raise ApiError(400, "invalid_request", f"response_format must be one of {', '.join(FORMATS)}")
    try:
        language = parse_language(fields.get("language", "auto") or "auto", ErrorCode.UNSUPPORTED_LANGUAGE)
        targets = parse_targets([t for t in fields.get("targets", "").split(",") if t.strip()],
                                ErrorCode.INVALID_TARGETS)
    except ProtocolError as err:
        raise ApiError(400, err.code.value, err.message) from None
    stream = fields.get("stream", "false").lower() in ("true", "1", "yes")
    diarize = fields.get("diarize", "false").lower() in ("true", "1", "yes") or fmt == DIARIZED
    return fmt, language, stream, targets, diarize


def _body(body: dict[str, object] | str, ctype: str) -> web.Response:
    if isinstance(body, dict):
        return web.json_response(body)
    return web.Response(text=body, content_type=ctype.split(";")[0], charset="utf-8")


class FileRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.files: FileJobs = services.files
        self.cfg = services.cfg

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/transcriptions", self.upload), web.get("/v1/transcriptions/ws", self.websocket),
                web.get("/v1/sessions/{session_id}/transcript", self.export)]

    async def upload(self, request: web.Request) -> web.StreamResponse:
        async with self.files.upload() as up:
            fields = await upload.multipart(request, up)
            fmt, language, stream, targets, diarize = _options(fields)
            channels = _channels(fields.get("channels", "1"))
            await self._served(language, targets)
            duration = await up.duration()
            if channels > 1:  # a wrong count is a 400 now, not an error event of a stream already answered 200
                check_count(channels, up.channels)
            if stream:
                return await self._sse(request, up.path, language, targets, fmt, duration, channels)
            cues, lang = await self.files.transcribe(up.path, language, targets, owner=request.get(auth.TOKEN, ""),
                                                     diarize=diarize, channels=channels)
            return _body(*render(cues, fmt, lang, duration))

    async def _served(self, language: str, targets: tuple[str, ...]) -> None:
        """A target no translator serves is a 400 now, before the file is transcribed without it."""
        try:
            await self.services.translations.check(language, targets)
        except ProtocolError as err:
            raise ApiError(400, err.code.value, err.message, "targets") from None

    async def _sse(self, request: web.Request, path: str, language: str, targets: tuple[str, ...], fmt: str,
                   duration: float, channels: int = 1) -> web.StreamResponse:
        cues: list[Cue] = []
        owner = request.get(auth.TOKEN, "")
        multi = channels > 1
        results = self.files.run_channels(path, language, targets, owner=owner, channels=channels) if multi else \
            self.files.run(path, language, targets, owner=owner)
        async with EventStream(request, self.cfg.sse_ping_s) as sse:
            try:
                async for r in results:
                    if r.kind is ResultKind.END:
                        body, _ = render(cues, fmt if fmt in ("json", "verbose_json") else "json", language, duration)
                        await sse.send(event(body if isinstance(body, dict) else {"text": body}, "done"))
                        break
                    if r.kind is ResultKind.FINAL and r.text:
                        cues.append(channel_cue(r) if multi else Cue.of(r))
                    await sse.send(event(render_result(r, targets=targets, multichannel=multi), r.kind.value))
            except ApiError as err:
                self.services.metrics.error(err.code)
                await sse.send(event({"code": err.code, "message": err.message}, "error"))
        return sse.response

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """`{"type":"file","language":…,"targets":[…]}`, binary frames of the file, `{"type":"end"}`."""
        ws = socket.accept(self.services)
        await ws.prepare(request)
        try:
            async with self.files.upload() as up:
                first = await ws.receive_json(timeout=self.cfg.idle_timeout_s)
                if not isinstance(first, dict) or first.get("type") != "file":
                    raise ApiError(400, "invalid_start", 'send {"type":"file"} first')
                language = parse_language(first.get("language", "auto"), ErrorCode.UNSUPPORTED_LANGUAGE)
                targets = parse_targets(first.get("targets", []), ErrorCode.INVALID_TARGETS)
                channels = check_channels(first.get("channels", 1), ErrorCode.UNSUPPORTED_CHANNELS)
                await self._served(language, targets)
                chunks: asyncio.Queue[bytes] = asyncio.Queue()

                async def read(_: int) -> bytes:
                    if not chunks.empty():
                        return chunks.get_nowait()
                    msg = await ws.receive(timeout=self.cfg.idle_timeout_s)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        return bytes(msg.data)
                    if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") == "end":
                        return b""
                    raise ApiError(400, "invalid_frame", 'send the file as binary frames, then {"type":"end"}')

                await up.store(read)
                duration = await up.duration()
                if channels > 1:
                    check_count(channels, up.channels)
                owner, multi = request.get(auth.TOKEN, ""), channels > 1
                results = self.files.run_channels(up.path, language, targets, owner=owner, channels=channels) \
                    if multi else self.files.run(up.path, language, targets, owner=owner)
                await ws.send_json({"type": "started", "duration": round(duration, 3), "language": language,
                                    "targets": list(targets), **({"channels": channels} if multi else {})})
                async for r in results:
                    if r.kind is ResultKind.END:
                        await ws.send_json({"type": "done", "session_id": r.session_id})
                        await ws.close(code=Close.NORMAL, message=b"done")
                        break
                    await ws.send_json(render_result(r, targets=targets, multichannel=multi))
        except ProtocolError as err:
            await self._ws_fail(ws, err.code.value, err.message, Close.POLICY)
        except ApiError as err:
            await self._ws_fail(ws, err.code, err.message, WS_CLOSE.get(err.status, Close.POLICY))
        except (TimeoutError, json.JSONDecodeError, TypeError):
            await self._ws_fail(ws, "invalid_start", 'send {"type":"file"}, the file as binary frames, then '
                                '{"type":"end"}', Close.POLICY)
        return ws

    async def _ws_fail(self, ws: web.WebSocketResponse, code: str, message: str, close: int) -> None:
        self.services.metrics.error(code)
        if ws.closed:
            return
        with contextlib.suppress(Exception):
            await ws.send_json({"type": "error", "code": code, "message": message})
            await ws.close(code=close, message=code.encode())

    async def export(self, request: web.Request) -> web.Response:
        sid = request.match_info["session_id"]
        fmt = request.query.get("format", "srt")
        translation = request.query.get("translation") or None
        if not _SESSION.match(sid):
            raise ApiError(400, "invalid_session_id", "not a session id")
        if fmt not in FORMATS:
            raise ApiError(400, "invalid_request", f"format must be one of {', '.join(FORMATS)}")
        finals, channels = await self.files.finals(sid, request.get(auth.TOKEN, ""))
        if not finals:
            raise ApiError(404, "not_found", f"no finished transcript for {sid} (kept 1 h)")
        language = next((t.language for t in finals if t.language), "")
        multi = channels > 1  # its JSON's segments and words say their channel
        cues = [Cue.of(t, t.channel if multi else None) for t in finals]
        return _body(*render(cues, fmt, language, max(t.end for t in finals), translation))
