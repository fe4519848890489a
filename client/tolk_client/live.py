"""A live session on `/v1/listen`: send audio, iterate results, survive network drops.

Shaped like livekit-agents' STT streams: `send` audio, `stop` (end of audio: the remaining finals follow),
`close`, and an async iterator of typed results. A dropped connection is resumed as the browser page does
(docs/protocol.md#resume): reconnect with jittered backoff and `start` again with the session id, its `resume_token`
and the last `seq` received; the server replays the finals missed, and anything at or below that `seq` is
dropped here too, so no result arrives twice. Audio sent while disconnected is kept (up to `buffer_s`) and
sent after the resume, so what is said during a short outage is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any

import aiohttp

from tolk_client import _net
from tolk_client.results import Result, TolkError

log = logging.getLogger("tolk_client")

# Errors after which resuming cannot help: the session itself is refused or over.
FATAL = frozenset({
    "invalid_json", "invalid_start", "unsupported_sample_rate", "unsupported_encoding", "invalid_audio",
    "unsupported_language", "invalid_session_id", "invalid_targets", "session_in_use", "overloaded",
    "session_too_long", "too_many_sessions", "unknown_session", "session_resumed", "audio_before_start",
    "invalid_frame", "frame_too_large", "invalid_base64", "idle_timeout", "drain_timeout", "unauthorized",
    "invalid_token", "token_expired",
})
_DONE = object()


class LiveSession:
    """One streaming session. Use `async with connect(...) as s:`; iterate `s` for results until `done`."""

    def __init__(self, url: str, *, language: str = "auto", targets: Sequence[str] = (), sample_rate: int = 16000,
                 encoding: str = "pcm_s16le", session_id: str | None = None, translate_partials: bool = False,
                 token: str | None = None, reconnect: bool = True, resume_within_s: float = 30.0,
                 buffer_s: float = 30.0, on_state: Callable[[str], None] | None = None, diarize: bool = False,
                 max_speakers: int | None = None, channels: int = 1) -> None:
        self.url = _net.ws_url(url)
        self.token = token
        self.settings: dict[str, Any] = {"sample_rate": sample_rate, "encoding": encoding, "language": language}
        if targets:
            self.settings |= {"targets": list(targets), "translate_partials": translate_partials}
        if diarize:  # speaker labels; `speakers` results (Kind.SPEAKERS) correct a final's labels
            self.settings |= {"diarize": True, **({"max_speakers": max_speakers} if max_speakers else {})}
        if channels > 1:  # interleaved audio, one pipeline per channel; such a session cannot be resumed
            self.settings["channels"] = channels
            reconnect = False
        self.session_id = session_id or ""
        self.resume_token = ""
        self.last_seq = 0
        self._last_seqs: dict[int, int] = {}  # a multichannel session's seqs count per audio channel
        self.resumes = 0
        self.done = False
        self.errors: list[TolkError] = []  # reported by the server without ending the session
        self.reconnect = reconnect
        self.on_state = on_state or (lambda state: None)  # "connected", "reconnecting", "resumed", "closed"
        self.resume_within_s = resume_within_s  # the server's TOLK_RESUME_GRACE_S
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._buffer_max = int(buffer_s * sample_rate * channels * (2 if encoding == "pcm_s16le" else 4)) \
            if encoding.startswith("pcm") else 4 << 20
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._results: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
        self._reader: asyncio.Task[None] | None = None
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> LiveSession:
        await self.start()
        return self

    async def __aexit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the session (raises TolkError if the server refuses it)."""
        self._http = aiohttp.ClientSession(headers=_net.headers(self.token))
        try:
            await self._open(resume=False)
        except BaseException:
            await self._http.close()
            raise
        self._reader = asyncio.create_task(self._read(), name=f"tolk_client.{self.session_id}")
        self.on_state("connected")

    async def send(self, audio: bytes) -> None:
        """Audio in the session's encoding; kept while reconnecting, sent in order once resumed."""
        if self._stopped:
            raise RuntimeError("send() after stop()")
        async with self._send_lock:
            if self._ws is not None and not self._ws.closed and not self._buffer:
                try:
                    await self._ws.send_bytes(audio)
                    return
                except (ConnectionError, aiohttp.ClientError):
                    pass  # the reader notices the drop and resumes; this frame waits in the buffer
            self._keep(audio)

    async def configure(self, *, targets: Sequence[str] | None = None, language: str | None = None,
                        translate_partials: bool | None = None) -> None:
        """Change languages mid-session (from the next utterance); remembered for a resume."""
        msg: dict[str, Any] = {"type": "configure"}
        if targets is not None:
            msg["targets"] = self.settings["targets"] = list(targets)
        if language is not None:
            msg["language"] = self.settings["language"] = language
        if translate_partials is not None:
            msg["translate_partials"] = self.settings["translate_partials"] = translate_partials
        await self._send_json(msg)

    async def stop(self) -> None:
        """End of audio: the server flushes, the remaining finals arrive, then iteration ends."""
        if not self._stopped:
            self._stopped = True
            await self._send_json({"type": "stop"})

    async def close(self, timeout: float = 60.0) -> None:
        """Stop if not yet stopped, wait (up to `timeout`) for the last finals, and release the connection."""
        with contextlib.suppress(Exception):
            await self.stop()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._reader), timeout)
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------------ results
    def __aiter__(self) -> AsyncIterator[Result]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Result]:
        while True:
            item = await self._results.get()
            if item is _DONE:
                self._results.put_nowait(_DONE)  # a second iteration ends at once too
                return
            if isinstance(item, TolkError):
                raise item
            yield item

    # ------------------------------------------------------------------ connection
    async def _open(self, resume: bool) -> None:
        assert self._http is not None
        start: dict[str, Any] = {"type": "start", **self.settings}
        if self.session_id:
            start["session_id"] = self.session_id
        if resume:
            start |= {"resume_token": self.resume_token, "resume_from": self.last_seq}
        ws = await self._http.ws_connect(self.url, heartbeat=15.0, max_msg_size=0)
        await ws.send_json(start)
        msg = await ws.receive(timeout=30)
        if msg.type != aiohttp.WSMsgType.TEXT:
            await ws.close()
            raise ConnectionError(f"no answer to start ({msg.type.name})")
        first = json.loads(msg.data)
        if first.get("type") == "error":
            await ws.close()
            raise TolkError.from_json(first)
        if first.get("type") != "started":
            await ws.close()
            raise TolkError("unexpected", f"expected started, got {first.get('type')!r}")
        self.session_id = first["session_id"]
        self.resume_token = first.get("resume_token") or self.resume_token
        self._ws = ws
        if resume:
            self.resumes += 1
            self.on_state("resumed")
            log.info("%s: resumed (%s finals replayed)", self.session_id, first.get("replayed", 0))
            async with self._send_lock:  # what was said meanwhile, then the stop if it was already sent
                while self._buffer:
                    chunk = self._buffer.popleft()
                    self._buffered -= len(chunk)
                    await ws.send_bytes(chunk)
                if self._stopped:
                    await ws.send_json({"type": "stop"})

    async def _read(self) -> None:
        try:
            while True:
                fatal = await self._read_connection()
                if self.done:
                    return
                if fatal is not None or not self.reconnect:
                    await self._results.put(fatal or TolkError("connection_lost", "the connection dropped"))
                    return
                if not await self._resume():
                    return
        finally:
            if self.done:
                await self._results.put(_DONE)
            self.on_state("closed")

    async def _read_connection(self) -> TolkError | None:
        """Results until `done` or the connection ends; a fatal error, or None to try a resume."""
        assert self._ws is not None
        fatal: TolkError | None = None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            kind = data.get("type")
            if kind in ("partial", "final"):
                r = Result.from_json(data)
                if r.seq > self._last_seqs.get(r.audio_channel, 0):  # a replayed one already seen is dropped
                    self._last_seqs[r.audio_channel] = r.seq
                    self.last_seq = self._last_seqs.get(0, 0)
                    await self._results.put(r)
            elif kind == "speakers":  # a correction of a final already delivered: same seq
                await self._results.put(Result.from_json(data))
            elif kind == "done":
                self.done = True
                return None
            elif kind == "error":
                err = TolkError.from_json(data)
                if err.code in FATAL:
                    fatal = err
                else:
                    self.errors.append(err)
                    log.warning("%s: %s", self.session_id, err)
        if fatal is None and self._ws.close_code in (1000, 1008, 1003, 1007, 1009):
            fatal = TolkError("closed", f"the server closed the session ({self._ws.close_code})")
        return fatal

    async def _resume(self) -> bool:
        self.on_state("reconnecting")
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        deadline = time.monotonic() + self.resume_within_s
        attempt = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(_net.retry_delay(attempt))
            attempt += 1
            try:
                await self._open(resume=True)
                return True
            except TolkError as err:
                await self._results.put(err)
                return False
            except (aiohttp.ClientError, ConnectionError, OSError, TimeoutError) as exc:
                log.info("%s: reconnect attempt %d failed: %s", self.session_id, attempt, exc)
        await self._results.put(TolkError("connection_lost", f"no resume within {self.resume_within_s:.0f} s"))
        return False

    def _keep(self, audio: bytes) -> None:
        self._buffer.append(audio)
        self._buffered += len(audio)
        while self._buffered > self._buffer_max and len(self._buffer) > 1:
            self._buffered -= len(self._buffer.popleft())  # oldest first: the outage outlasted the buffer

    async def _send_json(self, msg: dict[str, Any]) -> None:
        async with self._send_lock:
            if self._ws is not None and not self._ws.closed:
                with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                    await self._ws.send_json(msg)


def connect(url: str, **options: Any) -> LiveSession:
    """`async with connect("http://127.0.0.1:8080", language="en", targets=["pt"]) as s:` — see LiveSession."""
    return LiveSession(url, **options)
