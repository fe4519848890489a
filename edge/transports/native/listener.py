"""A WebSocket client listening to a broadcast channel: captions (with its translations) and audio.

SUBSCRIBED ⇄ (switching) → CLOSED. On subscribe it registers a listener record (so ingest runs the
channel and the translator serves its targets), replays the channel's last finals from JetStream
(`"replay": true`), then forwards live results and audio. Binary frames to the client are relayed
audio: 8 bytes of little-endian float64 stream time, then MP3; captions' `start`/`end` use the same clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import aiohttp
from aiohttp import web

from actors.runtime import channels
from edge.core import replay
from edge.core.commands import Configure, Start, Stop, Subscribe
from edge.core.errors import Close, ErrorCode, ProtocolError
from edge.core.services import Services
from edge.transports.native.codec import Audio, Unknown, parse_text
from edge.transports.native.hub import ChannelHub, Item
from schemas import ChannelRecord, ClientResult, ResultKind

log = logging.getLogger("tolk.edge.listener")

FAST_PATH_BUFFER = 16384  # bytes waiting in the socket below which a message is written directly
UPTO_S = 10.0  # how long after a replay a live copy of a replayed final may still arrive (normally milliseconds)


class _Replayed:
    __slots__ = ("result",)

    def __init__(self, result: ClientResult) -> None:
        self.result = result


class ChannelListener:
    def __init__(self, services: Services, hub: ChannelHub, ws: web.WebSocketResponse,
                 transport: asyncio.BaseTransport | None = None) -> None:
        self.services, self.hub = services, hub
        queue_size = services.cfg.result_queue
        self.ws = ws
        self.transport = transport if isinstance(transport, asyncio.WriteTransport) else None
        self._sending = False
        self.listener_id = uuid.uuid4().hex
        self.channel: ChannelRecord | None = None
        self.targets: tuple[str, ...] = ()
        self.translate_partials = False
        self.queue: asyncio.Queue[ClientResult | bytes | _Replayed] = asyncio.Queue(maxsize=queue_size)
        self._holding: list[ClientResult] | None = None  # live results that arrive during a replay
        self._upto: dict[str, int] = {}  # run → last seq replayed: its live copies are dropped (see _subscribe)
        self._upto_until = 0.0
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    async def serve(self, first: Subscribe) -> None:
        self.services.registry.listeners.add(self)
        self.services.metrics.sessions_started.labels("listener").inc()
        self._writer = asyncio.create_task(self._write_loop(), name=f"edge.listen.{self.listener_id}")
        try:
            await self._subscribe(first)
            await self._read_loop()
        except ProtocolError as err:
            await self.fail(err)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        except Exception:
            log.exception("listener %s: internal error", self.listener_id)
            await self.fail(ProtocolError(ErrorCode.INTERNAL, "internal error; please reconnect"))
        finally:
            # aiohttp cancels a handler whose client went away: the cleanup (KV writes, ending or detaching
            # the session) must finish anyway, so it runs as a task of the edge's own.
            await asyncio.shield(self.services.background(self._cleanup()))

    async def fail(self, err: ProtocolError) -> None:
        log.info("listener %s: %s (%s)", self.listener_id, err.code.value, err.message)
        self.services.metrics.error(err.code.value)
        if self.ws.closed:
            return
        with contextlib.suppress(Exception):
            await self.ws.send_json(err.to_json())
        if err.close is not None:
            self._closed = True
            with contextlib.suppress(Exception):
                await self.ws.close(code=err.close, message=err.code.value.encode())

    kill = fail  # what the registry calls at shutdown

    async def _cleanup(self) -> None:
        self._closed = True
        self.services.registry.listeners.discard(self)
        await self._leave()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        if not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.close()

    # ------------------------------------------------------------------ reading
    async def _read_loop(self) -> None:
        while not self._closed:
            msg = await self.ws.receive()  # no idle timeout: listeners only listen; pings find dead peers
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self.fail(ProtocolError(ErrorCode.NOT_STREAMING, "listeners do not send audio; ignored"))
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                return
            try:
                message = parse_text(msg.data, self.services.cfg.max_frame_bytes)
            except ProtocolError as err:
                if err.close is not None:
                    raise
                await self.fail(err)
                continue
            match message:
                case Subscribe():
                    await self._subscribe(message)
                case Configure(diarize=diarize, max_speakers=speakers) if diarize is not None or speakers is not None:
                    await self.fail(ProtocolError(ErrorCode.INVALID_DIARIZATION, "a channel's listeners get its "
                                                  "captions as they are: speaker labels are asked for by whoever "
                                                  "streams the audio (start's diarize)"))
                case Configure(targets=targets, translate_partials=partials):
                    await self._configure(targets, partials)
                case Stop():
                    with contextlib.suppress(Exception):
                        await self.ws.send_json({"type": "unsubscribed"})
                        await self.ws.close(code=Close.NORMAL, message=b"unsubscribed")
                    return
                case Start() | Audio():
                    await self.fail(ProtocolError(ErrorCode.NOT_STREAMING,
                                                  "this connection listens to a channel; open another to stream"))
                case Unknown(type=kind):
                    await self.fail(ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r} ignored"))

    # ------------------------------------------------------------------ channel membership
    async def _subscribe(self, sub: Subscribe) -> None:
        record = await self.services.channels.get(sub.channel)
        if record is None:  # reported; a listener already on a channel stays on it
            await self.fail(ProtocolError(ErrorCode.UNKNOWN_CHANNEL,
                                          f"no channel {sub.channel!r} (see GET /v1/channels)"))
            return
        if sub.targets is not None and not await self._served(record.language, sub.targets):
            return
        await self._leave()
        self.channel = record
        self.targets = sub.targets if sub.targets is not None else record.targets
        self.translate_partials = sub.translate_partials
        self._holding = []
        await self.hub.join(record.name, self)
        await self.announce()
        await self.ws.send_json({
            "type": "subscribed", "channel": record.name, "title": record.title, "language": record.language,
            "targets": list(self.targets), "translate_partials": self.translate_partials,
            "audio": {"codec": "mp3", "sample_rate": 16000, "frame": "8-byte float64le stream time + MP3"},
        })
        history = await self.hub.history(record.name)
        held, self._holding = self._holding, None
        last = {r.session_id: r.seq for r in history}
        if sub.after:  # a reconnect: what it saw live before the drop is not sent again
            last[sub.after[0]] = max(last.get(sub.after[0], 0), sub.after[1])
        replayed = replay.after_cursor(history, sub.after)
        for r in replayed:
            self._put(r, replay=True)
        # Fan-out stores a channel final before sending it live, so the live copy of something just replayed
        # may still be on its way: live results at or below what was replayed are dropped until a newer one of
        # that run arrives (after which they all are newer).
        # Only the runs that may still send: the one last stored, the one the reconnecting listener was on.
        self._upto = {sid: last[sid] for sid in {history[-1].session_id if history else "",
                                                  sub.after[0] if sub.after else ""} if sid in last}
        self._upto_until = time.monotonic() + UPTO_S
        for r in held or []:
            self.deliver_result(r)
        log.info("listener %s: on %s (%d replayed)", self.listener_id, record.name, len(replayed))

    async def _served(self, language: str, targets: tuple[str, ...]) -> bool:
        """False (and `unsupported_pair` reported; the listener keeps what it had) for a target no translator
        serves from the channel's language."""
        try:
            await self.services.translations.check(language, targets, keep_open=True)
        except ProtocolError as err:
            await self.fail(err)
            return False
        return True

    async def _configure(self, targets: tuple[str, ...] | None, partials: bool | None) -> None:
        if targets is not None and self.channel is not None and not await self._served(self.channel.language,
                                                                                        targets):
            return
        if targets is not None:
            self.targets = targets
        if partials is not None:
            self.translate_partials = partials
        await self.announce()
        await self.ws.send_json({"type": "configured", "channel": self.channel.name if self.channel else None,
                                 "targets": list(self.targets), "translate_partials": self.translate_partials})

    async def announce(self) -> None:
        if self.channel is None:
            return
        await self.services.listeners.put(channels.stream_id(self.channel.name), self.listener_id, self.targets,
                                          self.translate_partials)

    async def _leave(self) -> None:
        if self.channel is None:
            return
        name, self.channel = self.channel.name, None
        await self.hub.leave(name, self)
        await self.services.listeners.remove(channels.stream_id(name), self.listener_id)
        while not self.queue.empty():  # nothing of the old channel after the switch
            self.queue.get_nowait()

    # ------------------------------------------------------------------ delivery (from the hub)
    def _can_send_now(self) -> bool:
        """Nothing queued, nothing being sent, and the socket's buffer nearly empty: write directly.

        The common case for a healthy listener: the message, framed once for every listener (server frames
        are unmasked, so the bytes are the same for all), goes straight to the socket. That saves a queue
        hop, a task wake-up and a framing per listener per message: most of the cost of fanning one caption
        out to thousands. Frames are written whole, so they never interleave with aiohttp's own writes.
        """
        t = self.transport
        return (not self._closed and not self._sending and self._holding is None
                and not (self._upto and self._filtering()) and self.queue.empty()
                and t is not None and not t.is_closing() and t.get_write_buffer_size() < FAST_PATH_BUFFER)

    def deliver(self, items: list[Item], joined: dict[object, bytes], direct: bool) -> None:
        if direct and self._can_send_now():
            assert self.transport is not None
            key = (self.targets, self.translate_partials)
            data = joined.get(key)
            if data is None:
                hub = self.hub
                data = joined[key] = b"".join(
                    hub.framed(i, self._wanted(i), replay=False) if isinstance(i, ClientResult) else i[1]
                    for i in items)
            self.transport.write(data)
            now = time.time()
            for i in items:
                if isinstance(i, ClientResult) and i.published_at:
                    self.services.metrics.delivery_lag.observe(max(0.0, now - i.published_at))
            return
        for i in items:
            if isinstance(i, ClientResult):
                self.deliver_result(i)
            else:
                self.deliver_audio(*i)

    def deliver_result(self, result: ClientResult) -> None:
        if self._holding is not None:
            self._holding.append(result)
        elif self._upto and self._replayed_already(result):
            return
        elif self._can_send_now() and result.kind is not ResultKind.END:
            assert self.transport is not None
            self.transport.write(self.hub.framed(result, self._wanted(result), replay=False))
            self._observe(result, replay=False)
        else:
            self._put(result)

    def _filtering(self) -> bool:
        if time.monotonic() > self._upto_until:
            self._upto = {}
        return bool(self._upto)

    def _replayed_already(self, result: ClientResult) -> bool:
        if not self._filtering():
            return False
        upto = self._upto.get(result.session_id)
        if upto is None:
            return False
        if result.seq <= upto:
            return True
        del self._upto[result.session_id]  # fan-out sends a run's results in order: the rest are all new
        return False

    def deliver_audio(self, data: bytes, frame: bytes) -> None:
        """`frame`: `data` already framed as a WebSocket binary message (built once for every listener)."""
        if self._can_send_now():
            assert self.transport is not None
            self.transport.write(frame)
        elif not self._closed and not self.queue.full():
            self.queue.put_nowait(data)  # a full queue drops audio first: it is the first thing a slow reader loses

    def _put(self, result: ClientResult, replay: bool = False) -> None:
        if self._closed:
            return
        if self.queue.full():
            if result.kind is ResultKind.PARTIAL:
                return
            self._closed = True  # a final cannot be dropped: this reader is too far behind
            asyncio.get_running_loop().create_task(self.fail(ProtocolError(
                ErrorCode.SLOW_CONSUMER, "this connection reads too slowly to keep up with the channel")))
            return
        self.queue.put_nowait(_Replayed(result) if replay else result)

    async def _write_loop(self) -> None:
        while True:
            item = await self.queue.get()
            self._sending = True
            try:
                if isinstance(item, bytes):
                    await self.ws.send_bytes(item)
                elif isinstance(item, _Replayed):
                    await self._send_result(item.result, replay=True)
                else:
                    await self._send_result(item, replay=False)
            finally:
                self._sending = False

    async def _send_result(self, result: ClientResult, replay: bool) -> None:
        if result.kind is ResultKind.END:
            await self.ws.send_json({"type": "channel_ended", "channel": self.channel.name if self.channel
                                     else None, "session_id": result.session_id})
            return
        await self.ws.send_str(self.hub.rendered(result, self._wanted(result), replay))
        self._observe(result, replay)

    def _wanted(self, result: ClientResult) -> tuple[str, ...]:
        return self.targets if result.kind is not ResultKind.PARTIAL or self.translate_partials else ()

    def _observe(self, result: ClientResult, replay: bool) -> None:
        if result.published_at and not replay:
            self.services.metrics.delivery_lag.observe(max(0.0, time.time() - result.published_at))


