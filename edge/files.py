"""File transcription: upload a recording (any container PyAV decodes), watch partials and finals arrive.

The file goes through the same JetStream pipeline as a microphone, as a session `file-<id>`, only faster
than real time (`file_pace`). The upload is stored under a temporary name of our own: the client's file
name never touches a path. Routes: `POST /v1/transcriptions` (OpenAI-style multipart; `stream=true` for
server-sent events), `GET /v1/transcriptions/ws` (upload over a WebSocket, results as on /v1/listen) and
`GET /v1/sessions/{id}/transcript` (SRT / WebVTT / text / json of any finished session, from JetStream).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import aiohttp
import av
from aiohttp import web
from nats.aio.msg import Msg

from actors.runtime import listeners
from actors.runtime.media import SourceChunk, SourceEnded, read_source
from actors.runtime.partition import partition_for
from edge import auth, replay
from edge.formats import FORMATS, Cue, render
from edge.protocol import Close, ErrorCode, ProtocolError, parse_language, parse_targets, render_result
from edge.sse import EventStream, event
from schemas import (
    AudioChunk,
    ClientResult,
    DecodeError,
    Encoding,
    ListenerRecord,
    ResultKind,
    SessionRecord,
    Transcript,
    decode,
    encode,
)

if TYPE_CHECKING:
    from edge.app import Edge

log = logging.getLogger("tolk.edge.files")

_SESSION = re.compile(r"^[A-Za-z0-9_=-]{1,80}$")
# What aiohttp's multipart reader raises on a body that is not what its headers say.
MALFORMED = (ValueError, RuntimeError, AssertionError, LookupError, aiohttp.http_exceptions.HttpProcessingError)


class FileError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> web.Response:
        return web.json_response({"error": {"message": self.message, "type": "invalid_request_error",
                                            "code": self.code}}, status=self.status)


def probe(path: str) -> float:
    """Duration in seconds; FileError 415 when FFmpeg finds no decodable audio in it."""
    try:
        with av.open(path) as container:
            audio = next((s for s in container.streams if s.type == "audio"), None)
            if audio is None:
                raise FileError(415, "unsupported_media", "the file has no audio stream")
            seconds = 0.0
            for packet in container.demux(audio):  # decode a little: a header alone is not audio
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame) and frame.sample_rate:
                        seconds += frame.samples / frame.sample_rate
                if seconds >= 0.1:
                    break
            else:
                raise FileError(415, "unsupported_media", "no audio to transcribe: under 0.1 s decodes")
            return float(container.duration or 0) / 1e6
    except FileError:
        raise
    except (av.error.FFmpegError, ValueError, StopIteration) as exc:
        raise FileError(415, "unsupported_media", f"not audio FFmpeg can decode ({exc.__class__.__name__})") from None


class FileTranscriber:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.cfg = edge.cfg
        # Each job decodes on a thread of its own; jobs beyond file_jobs get 503 (try again), not a queue.
        self.threads = ThreadPoolExecutor(max_workers=2 * edge.cfg.file_jobs, thread_name_prefix="file")
        self.jobs = 0

    def admit(self) -> None:
        if self.jobs >= self.cfg.file_jobs:
            raise FileError(503, "busy", f"{self.cfg.file_jobs} files are being transcribed; try again shortly")

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One file job for the duration of the block (FileError 503 `busy` when all are taken)."""
        self.admit()
        self.jobs += 1
        try:
            yield
        finally:
            self.jobs -= 1

    async def transcribe(self, path: str, language: str, targets: tuple[str, ...] = (), prompt: str = "",
                         owner: str = "") -> tuple[list[Cue], str]:
        """Every final of the file as cues, and the language they came in (the detected one for `auto`)."""
        cues, lang = [], language
        async for r in self.run(path, language, targets, prompt, owner):
            if r.kind is ResultKind.FINAL and r.text:
                cues.append(_cue(r))
                lang = r.language or lang
        return cues, lang

    async def duration(self, path: str) -> float:
        """`probe` on a thread: FileError 415 when the file holds no decodable audio."""
        return await asyncio.get_running_loop().run_in_executor(self.threads, probe, path)

    # ------------------------------------------------------------------ the pipeline run
    async def run(self, path: str, language: str, targets: tuple[str, ...], prompt: str = "",
                  owner: str = "") -> AsyncIterator[ClientResult]:
        """`owner`: the uploader's identity (edge.auth), recorded so that only it can export the transcript."""
        sid = f"file-{uuid.uuid4().hex}"
        self.edge.metrics.sessions_started.labels("file").inc()
        partition = partition_for(sid, self.edge.partitions)
        now = time.time()
        await (await self.edge.sessions_kv()).put(sid, encode(SessionRecord(
            session_id=sid, status="file", sample_rate=16000, encoding=Encoding.PCM_S16LE, language=language,
            partition=partition, created_at=now, updated_at=now, edge=self.edge.instance,
            resume_key=secrets.token_urlsafe(18), owner=owner)))  # key never given out: not resumable
        results: asyncio.Queue[ClientResult] = asyncio.Queue()  # finals of a file are never dropped

        async def on_result(msg: Msg) -> None:
            with contextlib.suppress(DecodeError):
                results.put_nowait(decode(msg.data, ClientResult))

        sub = await self.edge.bus.nc.subscribe(f"tolk.session.{sid}.out", cb=on_result)
        kv = await self.edge.bus.kv(listeners.BUCKET)
        if targets:
            await listeners.put_listener(kv, ListenerRecord(stream_id=sid, listener_id="owner", targets=targets,
                                                            edge=self.edge.instance, updated_at=time.time()))
        feeder = asyncio.create_task(self._feed(path, sid, partition, language, prompt), name=f"edge.file.{sid}")
        try:
            while True:
                try:
                    result = await asyncio.wait_for(results.get(), timeout=self.cfg.file_result_timeout_s)
                except TimeoutError:
                    if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
                        log.error("%s: feeding the pipeline failed: %r", sid, feeder.exception())
                    raise FileError(504, "timeout", "the pipeline did not finish this file in time") from None
                yield result
                if result.kind is ResultKind.END:
                    return
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if targets:
                with contextlib.suppress(Exception):
                    await listeners.remove_listener(kv, sid, "owner")

    async def _feed(self, path: str, sid: str, partition: int, language: str, prompt: str = "") -> None:
        """Decode on a thread, publish 1 s chunks, at most `file_pace` × real time ahead of the wall clock."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[SourceChunk | None] = asyncio.Queue(maxsize=16)
        stop = threading.Event()

        def decode_all() -> None:
            def emit(chunk: SourceChunk) -> None:
                asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()

            try:
                read_source(path, emit, stop, 0.0, realtime=False, mp3=False, chunk_samples=16000)
            except SourceEnded:
                pass
            except Exception as exc:  # a truncated or damaged tail: transcribe what decoded
                log.warning("%s: decoding stopped early: %s", sid, exc)
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        thread = loop.run_in_executor(self.threads, decode_all)
        seq = 0
        began = time.monotonic()
        try:
            while True:
                chunk = await queue.get()
                seq += 1
                if chunk is not None:
                    ahead = chunk.t / self.cfg.file_pace - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                msg = AudioChunk(
                    session_id=sid, chunk_seq=seq, sample_rate=16000, encoding=Encoding.PCM_S16LE, language=language,
                    data=chunk.pcm if chunk else b"", received_at=time.time(), end=chunk is None, prompt=prompt,
                )
                await self.edge.bus.publish_audio(msg, partition)
                if chunk is None:
                    return
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                while not queue.empty():
                    queue.get_nowait()
            await thread

    # ------------------------------------------------------------------ upload handling
    async def receive_multipart(self, request: web.Request) -> tuple[str, dict[str, str]]:
        """The upload stored under a name of ours, and the other form fields (a repeated field's values
        joined by commas, e.g. `timestamp_granularities[]`)."""
        limit = self.cfg.max_upload_bytes
        if request.content_length is not None and request.content_length > limit + 65536:
            raise FileError(413, "file_too_large", f"uploads are limited to {limit} bytes")
        fields: dict[str, str] = {}
        path = ""
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                if part.name == "file":
                    _remove(path)  # a second `file` part replaces the first
                    path = await self.store(part.read_chunk, limit)
                elif part.name and len(fields) < 16:
                    value = (await part.read(decode=True))[:1024].decode("utf-8", "replace")
                    fields[part.name] = f"{fields[part.name]},{value}" if part.name in fields else value
        except MALFORMED as exc:  # a bad boundary, a truncated body, an unknown transfer encoding: aiohttp's words
            _remove(path)
            raise FileError(400, "invalid_request", f"malformed multipart/form-data ({exc.__class__.__name__}): "
                            "send a `file` field") from None
        if not path:
            raise FileError(400, "invalid_request", "missing the `file` field")
        return path, fields

    async def store(self, read: Any, limit: int) -> str:
        """Copy the upload to a temp file named by us (never by the client), enforcing the size limit."""
        fd, path = tempfile.mkstemp(prefix="tolk-upload-", dir=self.cfg.upload_dir or None)
        size = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                while chunk := await read(65536):
                    size += len(chunk)
                    if size > limit:
                        raise FileError(413, "file_too_large", f"uploads are limited to {limit} bytes")
                    fh.write(chunk)
        except BaseException:
            _remove(path)
            raise
        if size == 0:
            _remove(path)
            raise FileError(400, "empty_file", "the uploaded file is empty")
        return path

    @staticmethod
    def _options(fields: dict[str, str]) -> tuple[str, str, bool, tuple[str, ...]]:
        fmt = fields.get("response_format", "json")
        if fmt not in FORMATS:
            raise FileError(400, "invalid_request", f"response_format must be one of {', '.join(FORMATS)}")
        try:
            language = parse_language(fields.get("language", "auto") or "auto", ErrorCode.UNSUPPORTED_LANGUAGE)
            targets = parse_targets([t for t in fields.get("targets", "").split(",") if t.strip()],
                                    ErrorCode.INVALID_TARGETS)
        except ProtocolError as err:
            raise FileError(400, err.code.value, err.message) from None
        stream = fields.get("stream", "false").lower() in ("true", "1", "yes")
        return fmt, language, stream, targets

    def _count(self, code: str) -> None:
        self.edge.metrics.client_errors.labels(code).inc()

    # ------------------------------------------------------------------ routes
    async def upload(self, request: web.Request) -> web.StreamResponse:
        path = ""
        try:
            self.admit()
            self.jobs += 1
        except FileError as err:
            self._count(err.code)
            resp = err.response()
            resp.headers["Retry-After"] = "10"
            return resp
        try:
            path, fields = await self.receive_multipart(request)
            fmt, language, stream, targets = self._options(fields)
            duration = await self.duration(path)
            if stream:
                return await self._sse(request, path, language, targets, fmt, duration)
            cues, lang = await self.transcribe(path, language, targets, owner=request.get(auth.TOKEN, ""))
            body, ctype = render(cues, fmt, lang, duration)
            if isinstance(body, dict):
                return web.json_response(body)
            return web.Response(text=body, content_type=ctype.split(";")[0], charset="utf-8")
        except FileError as err:
            self._count(err.code)
            return err.response()
        finally:
            self.jobs -= 1
            if path:
                _remove(path)

    async def _sse(self, request: web.Request, path: str, language: str, targets: tuple[str, ...], fmt: str,
                   duration: float) -> web.StreamResponse:
        cues: list[Cue] = []
        async with EventStream(request, self.cfg.sse_ping_s) as sse:
            try:
                async for r in self.run(path, language, targets, owner=request.get(auth.TOKEN, "")):
                    if r.kind is ResultKind.END:
                        body, _ = render(cues, fmt if fmt in ("json", "verbose_json") else "json", language, duration)
                        await sse.send(event(body if isinstance(body, dict) else {"text": body}, "done"))
                        break
                    if r.kind is ResultKind.FINAL and r.text:
                        cues.append(_cue(r))
                    await sse.send(event(render_result(r, targets=targets), r.kind.value))
            except FileError as err:
                self._count(err.code)
                await sse.send(event({"code": err.code, "message": err.message}, "error"))
        return sse.response

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """`{"type":"file","language":…,"targets":[…]}`, binary frames of the file, `{"type":"end"}`."""
        ws = web.WebSocketResponse(max_msg_size=self.cfg.max_frame_bytes * 4 + 4096, heartbeat=self.cfg.ws_heartbeat_s)
        await ws.prepare(request)
        path = ""
        if self.jobs >= self.cfg.file_jobs:
            self._count("busy")
            await _ws_fail(ws, "busy", "too many files being transcribed; try again shortly", Close.TRY_AGAIN)
            return ws
        self.jobs += 1
        try:
            first = await ws.receive_json(timeout=self.cfg.idle_timeout_s)
            if not isinstance(first, dict) or first.get("type") != "file":
                raise FileError(400, "invalid_start", 'send {"type":"file"} first')
            language = parse_language(first.get("language", "auto"), ErrorCode.UNSUPPORTED_LANGUAGE)
            targets = parse_targets(first.get("targets", []), ErrorCode.INVALID_TARGETS)
            chunks: asyncio.Queue[bytes] = asyncio.Queue()

            async def read(_: int) -> bytes:
                if not chunks.empty():
                    return chunks.get_nowait()
                msg = await ws.receive(timeout=self.cfg.idle_timeout_s)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    return bytes(msg.data)
                if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") == "end":
                    return b""
                raise FileError(400, "invalid_frame", 'send the file as binary frames, then {"type":"end"}')

            path = await self.store(read, self.cfg.max_upload_bytes)
            duration = await self.duration(path)
            await ws.send_json({"type": "started", "duration": round(duration, 3), "language": language,
                                "targets": list(targets)})
            async for r in self.run(path, language, targets, owner=request.get(auth.TOKEN, "")):
                if r.kind is ResultKind.END:
                    await ws.send_json({"type": "done", "session_id": r.session_id})
                    await ws.close(code=Close.NORMAL, message=b"done")
                    break
                await ws.send_json(render_result(r, targets=targets))
        except ProtocolError as err:
            self._count(err.code.value)
            await _ws_fail(ws, err.code.value, err.message, Close.POLICY)
        except FileError as err:
            self._count(err.code)
            close = {413: Close.TOO_BIG, 415: Close.UNSUPPORTED_DATA}.get(err.status, Close.POLICY)
            await _ws_fail(ws, err.code, err.message, close)
        except (TimeoutError, json.JSONDecodeError, TypeError):
            self._count("invalid_start")
            await _ws_fail(ws, "invalid_start", 'send {"type":"file"}, the file as binary frames, then {"type":"end"}',
                           Close.POLICY)
        finally:
            self.jobs -= 1
            if path:
                _remove(path)
        return ws

    async def export(self, request: web.Request) -> web.Response:
        sid = request.match_info["session_id"]
        fmt = request.query.get("format", "srt")
        translation = request.query.get("translation") or None
        if not _SESSION.match(sid):
            return FileError(400, "invalid_session_id", "not a session id").response()
        if fmt not in FORMATS:
            return FileError(400, "invalid_request", f"format must be one of {', '.join(FORMATS)}").response()
        finals = await self._stored_finals(sid) if await self._owns(request, sid) else []
        if not finals:
            return FileError(404, "not_found", f"no finished transcript for {sid} (kept 1 h)").response()
        language = next((t.language for t in finals if t.language), "")
        body, ctype = render([_cue(t) for t in finals], fmt, language, max(t.end for t in finals), translation)
        if isinstance(body, dict):
            return web.json_response(body)
        return web.Response(text=body, content_type=ctype.split(";")[0], charset="utf-8")

    async def _owns(self, request: web.Request, sid: str) -> bool:
        """Only its owner reads a session; anyone else is told what a missing one tells (ids may be guessable).
        With authentication off every caller is "" and so is every owner."""
        who = request.get(auth.TOKEN, "")
        if sid.startswith("ch="):
            return True  # a channel run: channels are every authenticated listener's
        _, rec, _ = await self.edge.session_record(sid)
        if rec is None:
            return not who  # no record (expired, or from before owners were kept): open only when auth is off
        return bool(rec.owner == who)

    async def _stored_finals(self, sid: str) -> list[Transcript]:
        return replay.finals(await replay.stored(self.edge.bus, sid))


def _remove(path: str) -> None:
    """Unlinking a temp file is one syscall: not worth a thread hop."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _cue(r: ClientResult | Transcript) -> Cue:
    words = [{"word": w.word, "start": w.start, "end": w.end, "probability": w.probability} for w in r.words]
    return Cue(r.speech_start or r.start, r.end, r.text, words, dict(r.translations))


async def _ws_fail(ws: web.WebSocketResponse, code: str, message: str, close: int) -> None:
    if ws.closed:
        return
    with contextlib.suppress(Exception):
        await ws.send_json({"type": "error", "code": code, "message": message})
        await ws.close(code=close, message=code.encode())
