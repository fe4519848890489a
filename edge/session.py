"""One WebSocket client: AWAIT_START → STREAMING → DRAINING → CLOSED.

The reader task turns frames into AudioChunks on JetStream; the writer task turns this session's
results (core NATS, from fan-out) into JSON. Either side failing closes only this session.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hmac
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from aiohttp import web
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyWrongLastSequenceError

from actors.runtime import listeners
from actors.runtime.partition import partition_for
from edge import replay
from edge.audio_in import AudioFormatError, StreamDecoder, UnsupportedAudio, decoder_for
from edge.protocol import (
    Audio,
    Close,
    Configure,
    ErrorCode,
    ProtocolError,
    Start,
    Stop,
    Subscribe,
    Unknown,
    check_audio,
    parse_text,
    render_result,
)
from schemas import AudioChunk, ClientResult, DecodeError, ListenerRecord, ResultKind, SessionRecord, decode, encode

if TYPE_CHECKING:
    from edge.app import Edge

log = logging.getLogger("tolk.edge.session")


class Phase(enum.Enum):
    AWAIT_START = "await_start"
    STREAMING = "streaming"
    DRAINING = "draining"
    CLOSED = "closed"


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int
    idle_timeout_s: float
    stop_timeout_s: float
    result_queue: int
    max_session_s: float = 0.0  # from the session's creation, across resumes (0: no limit)


class Handover(Exception):
    """The first message was `subscribe`: this connection becomes a channel listener."""

    def __init__(self, subscribe: Subscribe) -> None:
        super().__init__("subscribe")
        self.subscribe = subscribe


class ClientSession:
    def __init__(self, edge: Edge, ws: web.WebSocketResponse, limits: Limits, token: str = "") -> None:
        self.edge = edge
        self.token = token  # the API token it came with (per-token limits)
        self.ws = ws
        self.limits = limits
        self.phase = Phase.AWAIT_START
        self.start: Start | None = None
        self.session_id = ""
        self.partition = 0
        self.chunk_seq = 0
        self.targets: tuple[str, ...] = ()
        self.translate_partials = False
        self.results: asyncio.Queue[ClientResult] = asyncio.Queue(maxsize=limits.result_queue)
        self.done = asyncio.Event()
        self._sub: Subscription | None = None
        self._writer: asyncio.Task[None] | None = None
        self.handed_over = False
        self.epoch = 0
        self.last_seq = 0  # highest seq sent to this client: results never repeat or go back
        self.resume_key = ""
        self.created_at = 0.0  # the session's, kept in KV: a resume does not restart the length limit
        self._closing = (Close.NORMAL, b"done")  # how the connection closes after `done`
        # Live results that arrive while a resume replays missed ones from JetStream.
        self._holding: list[ClientResult] | None = None
        # How this connection ended: a drop (or an edge restart) keeps the session for a resume; a
        # protocol error, an idle client or a newer connection resuming it does not.
        self._detach = False
        self.superseded = False
        self.decoder: StreamDecoder | None = None  # compressed audio (start.codec): decoded here, per connection

    # ------------------------------------------------------------------ lifecycle
    async def serve(self) -> Subscribe | None:
        """Returns the `subscribe` message when the client turned out to be a listener."""
        try:
            await self._read_loop()
        except Handover as h:
            self.handed_over = True
            return h.subscribe
        except ProtocolError as err:
            await self.fail(err)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self._detach = True
        except Exception:
            log.exception("%s: internal error", self.session_id or "session")
            await self.fail(ProtocolError(ErrorCode.INTERNAL, "internal error; please reconnect"))
        finally:
            # aiohttp cancels a handler whose client went away: the cleanup (KV writes, ending or detaching
            # the session) must finish anyway, so it runs as a task of the edge's own.
            await asyncio.shield(self.edge.background(self._cleanup()))
        return None

    async def fail(self, err: ProtocolError) -> None:
        log.info("%s: %s (%s)", self.session_id or "pre-start", err.code.value, err.message)
        self.edge.metrics.client_errors.labels(err.code.value).inc()
        if err.code is ErrorCode.SHUTTING_DOWN:
            self._detach = True  # the client reconnects to another edge and resumes
        if self.ws.closed:
            return
        with contextlib.suppress(Exception):
            await self.ws.send_json(self.error_json(err))
        if err.close is not None:
            self.phase = Phase.CLOSED
            with contextlib.suppress(Exception):
                await self.ws.close(code=err.close, message=err.code.value.encode())

    async def _cleanup(self) -> None:
        # Attached (epoch > 0) and not finished. Not `phase`: fail() has already set it to CLOSED.
        live = self.epoch > 0 and not self.done.is_set()
        if live and not self.superseded:
            if self._detach and self.edge.cfg.resume_grace_s > 0:
                # The client dropped: it may resume (here or on another edge) within the grace period.
                if await self._record("detached", only_if_ours=True):
                    self.edge.end_later(self.session_id, self.epoch, self.partition, self.start)
            else:  # an error ended it, or resuming is off: tell the pipeline now so it frees the session
                with contextlib.suppress(Exception):
                    await self._publish(b"", end=True)
        self.phase = Phase.CLOSED
        if self._writer:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self.session_id and not self.superseded:
            self.edge.unregister(self)
            if not (live and self._detach):
                await self._record("closed", only_if_ours=True)
                with contextlib.suppress(Exception):
                    await listeners.remove_listener(await self.edge.bus.kv(listeners.BUCKET), self.session_id,
                                                    "owner")
        if not self.ws.closed and not self.handed_over:
            with contextlib.suppress(Exception):
                await self.ws.close()

    # ------------------------------------------------------------------ reading
    async def _read_loop(self) -> None:
        while self.phase is not Phase.CLOSED:
            timeout = self.limits.stop_timeout_s if self.phase is Phase.DRAINING else self.limits.idle_timeout_s
            try:
                msg = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                if self.phase is Phase.DRAINING:
                    raise ProtocolError(ErrorCode.DRAIN_TIMEOUT, "results did not complete in time") from None
                raise ProtocolError(ErrorCode.IDLE_TIMEOUT, f"no message for {timeout:.0f} s") from None
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self._on_audio(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await self._on_text(msg.data)
            elif msg.type == aiohttp.WSMsgType.ERROR:
                exc = self.ws.exception()
                if isinstance(exc, aiohttp.WebSocketError) and exc.code == Close.TOO_BIG:
                    raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame exceeds {self.limits.max_frame_bytes} bytes")
                self._detach = True
                return
            else:  # CLOSE / CLOSING / CLOSED: gone without `stop`
                self._detach = True
                return
            if self.done.is_set():
                return

    async def _on_text(self, text: str) -> None:
        try:
            message = parse_text(text, self.limits.max_frame_bytes)
        except ProtocolError as err:
            if err.close is not None:
                raise
            await self.fail(err)  # reported; the connection goes on
            return
        match message:
            case Start():
                if self.phase is not Phase.AWAIT_START:
                    raise ProtocolError(ErrorCode.INVALID_START, "session already started")
                await self._begin(message)
            case Audio(data=data):
                await self._on_audio(data)
            case Subscribe():
                if self.phase is Phase.AWAIT_START:
                    raise Handover(message)
                await self.fail(ProtocolError(ErrorCode.NOT_STREAMING,
                                              "this connection streams audio; open another to listen to a channel"))
            case Configure():
                if self.phase is Phase.AWAIT_START:
                    raise ProtocolError(ErrorCode.INVALID_START, 'send {"type":"start"} first')
                await self._configure(message)
            case Stop():
                if self.phase is Phase.AWAIT_START:
                    raise ProtocolError(ErrorCode.INVALID_START, 'send {"type":"start"} first')
                if self.phase is Phase.STREAMING:
                    await self._drain()
            case Unknown(type=kind):
                if self.phase is Phase.AWAIT_START:
                    raise ProtocolError(ErrorCode.INVALID_START, f'expected {{"type":"start"}}, got {kind!r}')
                await self.fail(ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r} ignored"))

    async def _on_audio(self, data: bytes) -> None:
        if self.phase is Phase.AWAIT_START or self.start is None:
            raise ProtocolError(ErrorCode.AUDIO_BEFORE_START, 'send {"type":"start"} before audio')
        if self.decoder is None:
            check_audio(data, self.start.encoding, self.limits.max_frame_bytes)
        elif len(data) > self.limits.max_frame_bytes:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"audio frame of {len(data)} bytes exceeds "
                                f"{self.limits.max_frame_bytes}")
        if self.phase is not Phase.STREAMING or not data:
            return  # audio after stop is ignored: the stream is already being flushed
        if self.decoder is not None:
            try:  # a large frame (minutes of Opus) decodes off the event loop, so other sessions do not wait
                data = await asyncio.to_thread(self.decoder.feed, data) if len(data) > 16384 \
                    else self.decoder.feed(data)
            except UnsupportedAudio as exc:
                raise ProtocolError(ErrorCode.UNSUPPORTED_ENCODING, str(exc)) from None
            except AudioFormatError as exc:
                raise ProtocolError(ErrorCode.INVALID_AUDIO, f"{self.start.wire_encoding}: {exc}") from None
            except Exception as exc:  # whatever a damaged stream makes the parser or FFmpeg raise: this session's
                raise ProtocolError(ErrorCode.INVALID_AUDIO, f"{self.start.wire_encoding}: undecodable audio "
                                    f"({exc.__class__.__name__})") from None
            if not data:
                return
        limit = self.limits.max_session_s
        if limit and time.time() - self.created_at > limit:
            await self._too_long(limit)
            return
        await self._publish(data, end=False)

    async def _too_long(self, limit: float) -> None:
        """Like `stop`, said first: what was spoken so far still arrives, then `done` and a 1008 close."""
        await self.fail(ProtocolError(ErrorCode.SESSION_TOO_LONG, f"sessions are limited to {limit:.0f} s; the "
                                      "rest of this one is flushed, then it closes"))
        self._closing = (Close.POLICY, ErrorCode.SESSION_TOO_LONG.value.encode())
        await self._drain()

    async def _drain(self) -> None:
        self.phase = Phase.DRAINING
        await self._publish(b"", end=True)
        await self._record("draining", only_if_ours=True)

    # ------------------------------------------------------------------ start
    async def _begin(self, start: Start) -> None:
        sid = start.session_id or uuid.uuid4().hex
        resuming = start.resume_from is not None
        current = self.edge.sessions.get(sid)
        if current is not None and not resuming:
            raise ProtocolError(ErrorCode.SESSION_IN_USE, f"session {sid} is already streaming")
        if not resuming:
            await self.edge.admit(self.token, start.language)
        # Claimed before anything of this connection is set: a refused start leaves the session untouched.
        epoch = await self._attach(sid, start)
        self.start, self.session_id, self.epoch = start, sid, epoch
        self.decoder = decoder_for(start.codec) if start.codec else None
        self.partition = partition_for(sid, self.edge.partitions)
        self.chunk_seq = epoch << 32
        if current is not None:  # the old connection is half-dead (the client already came back): retire it
            current.superseded = True
            await current.fail(ProtocolError(ErrorCode.SESSION_RESUMED, "this session was resumed on a new connection"))
        self.edge.register(self)
        self._holding = [] if resuming else None
        # Subscribe before any audio is published (or anything replayed), so no result can be missed.
        self._sub = await self.edge.bus.nc.subscribe(
            f"tolk.session.{sid}.out", cb=self._on_result, pending_msgs_limit=self.limits.result_queue * 4
        )
        self._writer = asyncio.create_task(self._write_loop(), name=f"edge.write.{sid}")
        self.targets, self.translate_partials = start.targets, start.translate_partials
        await self.announce()  # before any audio: the translator must know the targets by the first final
        self.phase = Phase.STREAMING
        self.edge.metrics.sessions_started.labels("resume" if resuming else "mic").inc()
        missed = await self._missed(start.resume_from) if start.resume_from is not None else []
        await self.send_started({
            "type": "started", "session_id": sid, "sample_rate": start.sample_rate,
            "encoding": start.wire_encoding, "language": start.language, "targets": list(self.targets),
            "translate_partials": self.translate_partials, "resume_token": self.resume_key,
            **({"resumed": True, "replayed": len(missed)} if resuming else {}),
        })
        if start.resume_from is not None:
            await self._release(missed, start.resume_from)

    async def _attach(self, sid: str, start: Start) -> int:
        """Claims the session in KV (compare-and-set): a new one, or an existing one being resumed."""
        kv, rec, revision = await self.edge.session_record(sid)
        now = time.time()
        if start.resume_from is None:
            if rec is not None:  # the segmenter would take a reused id's audio for a redelivery and drop it
                raise ProtocolError(ErrorCode.SESSION_IN_USE, f"session {sid} exists ({rec.status}): resume it "
                                    'with "resume_from", or start with a new session_id')
            epoch, created, key = 1, now, secrets.token_urlsafe(18)
        else:
            if (rec is None or rec.owner != self.token
                    or not hmac.compare_digest(rec.resume_key.encode(), start.resume_token.encode())):
                # A wrong token gets the same answer as no session: ids cannot be probed.
                raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"no session {sid} to resume with that resume_token "
                                    "(sessions are kept for an hour); start a new one")
            if (rec.sample_rate, rec.encoding) != (start.sample_rate, start.encoding):
                raise ProtocolError(ErrorCode.INVALID_START, f"resume with the session's sample_rate "
                                    f"({rec.sample_rate}) and encoding ({rec.encoding.value})")
            epoch, created, key = rec.epoch + 1, rec.created_at, rec.resume_key
        status = "closed" if rec is not None and rec.status == "closed" else "streaming"  # (a finished one: replay)
        new = SessionRecord(session_id=sid, status=status, sample_rate=start.sample_rate, encoding=start.encoding,
                            language=start.language, partition=partition_for(sid, self.edge.partitions),
                            created_at=created, updated_at=now, edge=self.edge.instance, epoch=epoch,
                            resume_key=key, owner=self.token)
        try:
            if revision is None:
                await kv.create(sid, encode(new))
            else:
                await kv.update(sid, encode(new), last=revision)
        except KeyWrongLastSequenceError:
            raise ProtocolError(ErrorCode.SESSION_IN_USE, f"session {sid} was just claimed by another "
                                "connection") from None
        self.edge.cancel_end(sid)
        self.resume_key, self.created_at = key, created
        return epoch

    async def _missed(self, after_seq: int) -> list[ClientResult]:
        return replay.missed(await replay.stored(self.edge.bus, self.session_id), after_seq)

    async def _release(self, missed: list[ClientResult], after_seq: int) -> None:
        """Replayed results first, then what arrived live meanwhile. The writer drops any seq at or below the
        last one sent, so a live result that was also replayed, or is older, never goes out twice or backwards."""
        self.last_seq = after_seq
        held, self._holding = self._holding or [], None
        for r in [*missed, *held]:
            await self.results.put(r)
        log.info("%s: resumed (epoch %d) after seq %d: %d replayed", self.session_id, self.epoch, after_seq,
                 len(missed))

    async def _configure(self, c: Configure) -> None:
        """Takes effect from the next utterance (one already being transcribed keeps its settings)."""
        assert self.start is not None
        if c.language is not None and c.language != self.start.language:
            self.start = dataclasses.replace(self.start, language=c.language)
            await self._record(self.phase.value, only_if_ours=True)
        targets = self.targets if c.targets is None else c.targets
        partials = self.translate_partials if c.translate_partials is None else c.translate_partials
        await self.announce(targets, partials)
        # `configured` goes out before results are rendered with the new targets, never after one of them.
        await self.ws.send_json({
            "type": "configured", "session_id": self.session_id, "language": self.start.language,
            "targets": list(targets), "translate_partials": partials,
        })
        self.targets, self.translate_partials = targets, partials

    async def announce(self, targets: tuple[str, ...] | None = None, partials: bool | None = None) -> None:
        """(Re)write this client's listener record: what the translator translates this stream into."""
        record = ListenerRecord(
            stream_id=self.session_id, listener_id="owner",
            targets=self.targets if targets is None else targets,
            translate_partials=self.translate_partials if partials is None else partials,
            edge=self.edge.instance, updated_at=time.time(),
        )
        try:
            await listeners.put_listener(await self.edge.bus.kv(listeners.BUCKET), record)
        except Exception as exc:
            log.warning("%s: listener record not written: %s", self.session_id, exc)

    async def _publish(self, data: bytes, end: bool) -> None:
        assert self.start is not None
        self.chunk_seq += 1
        chunk = AudioChunk(
            session_id=self.session_id, chunk_seq=self.chunk_seq, sample_rate=self.start.sample_rate,
            encoding=self.start.encoding, language=self.start.language, data=data,
            received_at=time.time(), end=end,
        )
        await self.edge.bus.publish_audio(chunk, self.partition)

    async def _record(self, status: str, only_if_ours: bool = False) -> bool:
        """Writes this session's KV record; with `only_if_ours`, not if a newer connection resumed it.
        False when it was not written."""
        if self.start is None:
            return False
        try:
            kv, rec, revision = await self.edge.session_record(self.session_id)
            if rec is None or (only_if_ours and rec.epoch != self.epoch):
                return False
            new = msgspec.structs.replace(rec, status=status, language=self.start.language, updated_at=time.time(),
                                          edge=self.edge.instance)
            await kv.update(self.session_id, encode(new), last=revision)
            return True
        except Exception as exc:  # state is advisory here; streaming goes on
            log.warning("%s: session record not written: %s", self.session_id, exc)
            return False

    # ------------------------------------------------------------------ what the client sees (vendor adapters
    # on this same session, edge/vendors/, override these three)
    def error_json(self, err: ProtocolError) -> dict[str, Any]:
        return err.to_json()

    async def send_started(self, started: dict[str, Any]) -> None:
        await self.ws.send_json(started)

    async def send_result(self, result: ClientResult, targets: tuple[str, ...]) -> None:
        await self.ws.send_json(render_result(result, targets=targets))

    # ------------------------------------------------------------------ results
    async def _on_result(self, msg: Msg) -> None:
        try:
            result = decode(msg.data, ClientResult)
        except DecodeError as exc:
            log.error("%s: dropping undecodable result: %s", self.session_id, exc)
            return
        if self._holding is not None:
            self._holding.append(result)
            return
        if result.kind is ResultKind.PARTIAL and self.results.full():
            return  # a slow reader loses partials first; the next partial or the final supersedes it
        await self.results.put(result)

    async def _write_loop(self) -> None:
        while True:
            result = await self.results.get()
            if result.seq <= self.last_seq:
                continue  # already sent (a fan-out that crashed between sending and recording it sends again)
            self.last_seq = result.seq
            wanted = self.targets if result.kind is not ResultKind.PARTIAL or self.translate_partials else ()
            await self.send_result(result, wanted)
            if result.kind is ResultKind.END:
                self.done.set()
                self.phase = Phase.CLOSED
                code, reason = self._closing
                await self.ws.close(code=code, message=reason)
                return
