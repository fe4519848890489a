"""A live session without a socket: AWAIT_START → STREAMING → DRAINING → CLOSED.

Every streaming API (Tolk's, Deepgram's, Speechmatics') drives one of these from its own read loop
(edge/transports/socket.py): `begin`, `push`, `configure`, `stop`, then `close`; results come out of
`next_result()` in order, each once. Audio goes to JetStream; this session's results arrive on core NATS from
fan-out. The session knows nothing of the wire: what the client must be told goes through `kill`, which the
transport renders.

A multichannel session (`start.channels` > 1) is one session to the client and N streams to the pipeline: each
`Lane` is one channel's stream, `<session>=c<i>` (a name no client can pick), with its own segmenter state, STT
prompt, translation, fan-out order and results subscription; the interleaved audio is split here and the lanes'
results are merged into the one queue, each tagged with its channel. A one-channel session has one lane under its
own id, so nothing downstream changes for it.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from nats.aio.subscription import Subscription

from edge.audio.decoders import AudioFormatError, StreamDecoder, UnsupportedAudio, decoder_for
from edge.audio.pcm import split_channels
from edge.core import replay
from edge.core.commands import Configure, Start, check_audio
from edge.core.errors import Close, ErrorCode, ProtocolError
from edge.core.pipeline import lane_stream
from edge.core.records import Conflict
from edge.core.services import Services
from schemas import ClientResult, ResultKind, SessionRecord

log = logging.getLogger("tolk.edge.session")


class Phase(enum.Enum):
    AWAIT_START = "await_start"
    STREAMING = "streaming"
    DRAINING = "draining"
    CLOSED = "closed"


@dataclass(frozen=True)
class Started:
    session_id: str
    start: Start
    targets: tuple[str, ...]
    translate_partials: bool
    resume_token: str
    resumed: bool
    replayed: int


Tell = Callable[[ProtocolError], Awaitable[None]]


@dataclass
class Lane:
    """One channel's stream through the pipeline: its own chunk numbering, results subscription, seq order and
    END."""

    channel: int
    stream: str  # the pipeline's session id: the session's own with one channel, else lane_stream()
    chunk_seq: int = 0
    published: int = 0  # bytes of PCM handed to the pipeline
    last_seq: int = 0  # highest seq handed out: results never repeat or go back
    ended: bool = False  # its END was published (the client closed this channel, or the whole session)
    done: bool = False  # its END came back: every result of this channel is out
    decoder: StreamDecoder | None = None  # per-channel compressed audio (Speechmatics' AddChannelAudio of files)
    sub: Subscription | None = None


class LiveSession:
    def __init__(self, services: Services, token: str, tell: Tell, resumable: bool = True) -> None:
        self.services = services
        self.limits = services.cfg.limits
        self.token = token  # the API token it came with (per-token limits)
        self.tell = tell  # reports an error to the client in its API's shape (and closes where the code says)
        self.resumable = resumable  # a dropped client's session waits for a resume (APIs that have resume)
        self.phase = Phase.AWAIT_START
        self.start: Start | None = None
        self.session_id = ""
        self.lanes: list[Lane] = []  # one per channel (begin)
        self.targets: tuple[str, ...] = ()
        self.translate_partials = False
        self.results: asyncio.Queue[ClientResult] = asyncio.Queue(maxsize=self.limits.result_queue)
        self.done = asyncio.Event()
        self.epoch = 0
        self.resume_key = ""
        self.created_at = 0.0  # the session's, kept in KV: a resume does not restart the length limit
        self.closing: tuple[int, bytes] = (Close.NORMAL, b"done")  # how the connection closes after the END
        # Live results that arrive while a resume replays missed ones from JetStream.
        self._holding: list[ClientResult] | None = None
        # How the connection ended: a drop (or an edge restart) keeps the session for a resume; a protocol
        # error, an idle client or a newer connection resuming it does not.
        self.detach = False
        self.superseded = False
        self.decoder: StreamDecoder | None = None  # compressed audio (start.codec): decoded here, per connection

    @property
    def language(self) -> str | None:
        return self.start.language if self.start is not None else None

    @property
    def channels(self) -> int:
        """Pipelines this session runs (what admission counts it as)."""
        return self.start.channels if self.start is not None else 1

    @property
    def published(self) -> int:
        """Bytes of PCM handed to the pipeline, per channel (the furthest channel's)."""
        return max((lane.published for lane in self.lanes), default=0)

    async def kill(self, err: ProtocolError) -> None:
        if err.code is ErrorCode.SHUTTING_DOWN:
            self.detach = True  # the client reconnects to another edge and resumes
        await self.tell(err)

    # ------------------------------------------------------------------ start
    async def begin(self, start: Start, send_started: Callable[[Started], Awaitable[None]]) -> None:
        """Admits (a new session) or resumes, subscribes to results, then `send_started`, then what a resume missed.
        The caller's writer must already be taking `next_result()`: a long replay fills the bounded queue."""
        if self.phase is not Phase.AWAIT_START:
            raise ProtocolError(ErrorCode.INVALID_START, "session already started")
        s = self.services
        sid = start.session_id or uuid.uuid4().hex
        resuming = start.resume_from is not None
        current = s.registry.sessions.get(sid)
        if current is not None and not resuming:
            raise ProtocolError(ErrorCode.SESSION_IN_USE, f"session {sid} is already streaming")
        if not resuming:
            # A target no translator serves is refused now, not held and sent back untranslated with every final.
            beats = s.beats.once()  # one heartbeat read for both: the translators' catalogs, the STT replicas' load
            await s.translations.check(start.language, start.targets, beats=beats)
            await s.admission.admit(self.token, start.language, sid, start.channels, beats=beats)
        elif start.channels > 1:  # a multichannel session is not resumable: its connection was its life
            raise ProtocolError(ErrorCode.UNSUPPORTED_CHANNELS, "multichannel sessions cannot be resumed; start a "
                                "new one")
        # Claimed before anything of this connection is set: a refused start leaves the session untouched.
        epoch = await self._attach(sid, start)
        self.start, self.session_id, self.epoch = start, sid, epoch
        self.decoder = decoder_for(start.codec, start.channels) if start.codec else None
        self.lanes = [Lane(0, sid, chunk_seq=epoch << 32)] if start.channels == 1 else \
            [Lane(c, lane_stream(sid, c), chunk_seq=epoch << 32) for c in range(start.channels)]
        if start.channels > 1:
            self.resumable = False
        if isinstance(current, LiveSession):  # the old connection is half-dead (the client came back): retire it
            current.superseded = True
            await current.kill(ProtocolError(ErrorCode.SESSION_RESUMED, "this session was resumed on a new "
                                             "connection"))
        s.registry.register(self)
        self._holding = [] if resuming else None
        # Subscribe before any audio is published (or anything replayed), so no result can be missed.
        for lane in self.lanes:
            lane.sub = await s.pipeline.results(lane.stream, self._receiver(lane),
                                                pending=self.limits.result_queue * 4)
        self.targets, self.translate_partials = start.targets, start.translate_partials
        await self.announce()  # before any audio: the translator must know the targets by the first final
        self.phase = Phase.STREAMING
        s.metrics.sessions_started.labels("resume" if resuming else "mic").inc()
        resume_from = start.resume_from
        missed = [] if resume_from is None else replay.missed(await replay.stored(s.bus, sid), resume_from)
        if missed and start.diarize:  # replayed finals with their speakers, as they went out live
            missed = replay.labelled(missed, await replay.speakers(s.bus, sid))
        await send_started(Started(sid, start, self.targets, self.translate_partials, self.resume_key, resuming,
                                   len(missed)))
        if resume_from is not None:
            await self._release(missed, resume_from)

    async def _attach(self, sid: str, start: Start) -> int:
        """Claims the session in KV (compare-and-set): a new one, or an existing one being resumed."""
        s = self.services
        rec, revision = await s.sessions.get(sid)
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
            if rec.channels > 1:
                raise ProtocolError(ErrorCode.UNSUPPORTED_CHANNELS, f"session {sid} was multichannel: multichannel "
                                    "sessions cannot be resumed; start a new one")
            if (rec.sample_rate, rec.encoding) != (start.sample_rate, start.encoding):
                raise ProtocolError(ErrorCode.INVALID_START, f"resume with the session's sample_rate "
                                    f"({rec.sample_rate}) and encoding ({rec.encoding.value})")
            epoch, created, key = rec.epoch + 1, rec.created_at, rec.resume_key
        status = "closed" if rec is not None and rec.status == "closed" else "streaming"  # (a finished one: replay)
        new = SessionRecord(session_id=sid, status=status, sample_rate=start.sample_rate, encoding=start.encoding,
                            language=start.language, partition=s.pipeline.partition(sid), created_at=created,
                            updated_at=now, edge=s.instance, epoch=epoch, resume_key=key, owner=self.token,
                            channels=start.channels)
        try:
            await s.sessions.claim(new, revision)
        except Conflict:
            raise ProtocolError(ErrorCode.SESSION_IN_USE, f"session {sid} was just claimed by another "
                                "connection") from None
        s.detached.cancel(sid)
        self.resume_key, self.created_at = key, created
        return epoch

    async def _release(self, missed: list[ClientResult], after_seq: int) -> None:
        """Replayed results first, then what arrived live meanwhile. `next_result` drops any seq at or below the
        last one handed out, so a live result that was also replayed, or is older, never goes out twice or
        backwards."""
        self.lanes[0].last_seq = after_seq
        held, self._holding = self._holding or [], None
        for r in [*missed, *held]:
            await self.results.put(r)
        log.info("%s: resumed (epoch %d) after seq %d: %d replayed", self.session_id, self.epoch, after_seq,
                 len(missed))

    # ------------------------------------------------------------------ audio and commands
    async def push(self, data: bytes) -> None:
        """Audio as the session's `start` described it (PCM, or compressed: decoded here)."""
        if self.phase is Phase.AWAIT_START or self.start is None:
            raise ProtocolError(ErrorCode.AUDIO_BEFORE_START, 'send {"type":"start"} before audio')
        if self.decoder is None:
            check_audio(data, self.start.encoding, self.limits.max_frame_bytes, self.start.channels)
        elif len(data) > self.limits.max_frame_bytes:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"audio frame of {len(data)} bytes exceeds "
                                f"{self.limits.max_frame_bytes}")
        if self.phase is not Phase.STREAMING or not data:
            return  # audio after stop is ignored: the stream is already being flushed
        width = self.start.encoding.sample_width
        if self.decoder is not None:
            data = await self._decode(self.decoder, data)
            width = 2  # decoders hand out s16le
            if not data:
                return
        if not await self._within_limit():
            return
        if len(self.lanes) == 1:
            await self._publish(self.lanes[0], data, end=False)
            return
        for lane, part in zip(self.lanes, split_channels(data, width, len(self.lanes)), strict=True):
            if not lane.ended:
                await self._publish(lane, part, end=False)

    async def push_channel(self, channel: int, data: bytes) -> None:
        """One channel's audio on its own (Speechmatics' AddChannelAudio): that channel's samples only, in the
        session's encoding (or its own stream of the session's compressed kind, decoded here)."""
        if self.phase is Phase.AWAIT_START or self.start is None:
            raise ProtocolError(ErrorCode.AUDIO_BEFORE_START, 'send {"type":"start"} before audio')
        lane = self.lanes[channel]
        if not self.start.codec:
            check_audio(data, self.start.encoding, self.limits.max_frame_bytes)
        elif len(data) > self.limits.max_frame_bytes:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"audio frame of {len(data)} bytes exceeds "
                                f"{self.limits.max_frame_bytes}")
        if self.phase is not Phase.STREAMING or lane.ended or not data:
            return
        if self.start.codec:
            if lane.decoder is None:
                lane.decoder = decoder_for(self.start.codec)
            data = await self._decode(lane.decoder, data)
            if not data:
                return
        if await self._within_limit():
            await self._publish(lane, data, end=False)

    async def _decode(self, decoder: StreamDecoder, data: bytes) -> bytes:
        assert self.start is not None
        try:  # a large frame (minutes of Opus) decodes off the event loop, so other sessions do not wait
            return await asyncio.to_thread(decoder.feed, data) if len(data) > 16384 else decoder.feed(data)
        except UnsupportedAudio as exc:
            raise ProtocolError(ErrorCode.UNSUPPORTED_ENCODING, str(exc)) from None
        except AudioFormatError as exc:
            raise ProtocolError(ErrorCode.INVALID_AUDIO, f"{self.start.wire_encoding}: {exc}") from None
        except Exception as exc:  # whatever a damaged stream makes the parser or FFmpeg raise: this session's
            raise ProtocolError(ErrorCode.INVALID_AUDIO, f"{self.start.wire_encoding}: undecodable audio "
                                f"({exc.__class__.__name__})") from None

    async def _within_limit(self) -> bool:
        limit = self.limits.max_session_s
        if limit and time.time() - self.created_at > limit:
            await self._too_long(limit)
            return False
        return True

    async def _too_long(self, limit: float) -> None:
        """Like `stop`, said first: what was spoken so far still arrives, then the END and a 1008 close."""
        await self.tell(ProtocolError(ErrorCode.SESSION_TOO_LONG, f"sessions are limited to {limit:.0f} s; the "
                                      "rest of this one is flushed, then it closes"))
        self.closing = (Close.POLICY, ErrorCode.SESSION_TOO_LONG.value.encode())
        await self.stop()

    async def stop(self) -> None:
        """The end of the audio: what was said is flushed; `next_result` ends with the END."""
        if self.phase is not Phase.STREAMING:
            return
        self.phase = Phase.DRAINING
        for lane in self.lanes:
            if not lane.ended:
                await self._publish(lane, b"", end=True)
        await self._record("draining")

    async def stop_channel(self, channel: int) -> None:
        """The end of one channel's audio (Speechmatics' EndOfChannel): it is flushed; the session drains once
        every channel has ended."""
        if self.phase is not Phase.STREAMING or self.lanes[channel].ended:
            return
        await self._publish(self.lanes[channel], b"", end=True)
        if all(lane.ended for lane in self.lanes):
            await self.stop()

    async def flush(self) -> None:
        """The open utterance ends now, mid-speech if need be, and its final (endpoint `flush`, empty when nothing
        was open) follows every earlier one: a voice agent's turn is over when the client says so."""
        if self.phase is Phase.AWAIT_START or self.start is None:
            raise ProtocolError(ErrorCode.INVALID_START, 'send {"type":"start"} before flush')
        if self.phase is not Phase.STREAMING:
            return  # after stop: everything is being flushed already
        for lane in self.lanes:
            if not lane.ended:
                await self._publish(lane, b"", end=False, flush=True)

    async def configure(self, c: Configure, confirm: Callable[[Configure], Awaitable[None]]) -> None:
        """Takes effect from the next utterance (one already being transcribed keeps its settings). `confirm` gets
        the whole new configuration before any result is rendered with it, never after one."""
        assert self.start is not None
        start = self.start
        if c.targets is not None or c.language is not None:  # refused whole: the session keeps its settings
            await self.services.translations.check(start.language if c.language is None else c.language,
                                                   self.targets if c.targets is None else c.targets, keep_open=True)
        diarize, max_speakers = start.diarize, start.max_speakers
        if c.diarize is not None or c.max_speakers is not None:
            diarize = start.diarize if c.diarize is None else c.diarize
            if c.max_speakers and not diarize:
                raise ProtocolError(ErrorCode.INVALID_CONFIGURE, "max_speakers needs diarization on")
            max_speakers = (start.max_speakers if c.max_speakers is None else c.max_speakers) if diarize else 0
        # Left out (None): kept. The chunks carry the new settings from now on.
        self.start = dataclasses.replace(
            start, language=start.language if c.language is None else c.language,
            endpoint_ms=start.endpoint_ms if c.endpoint_ms is None else c.endpoint_ms,
            max_utterance_s=start.max_utterance_s if c.max_utterance_s is None else c.max_utterance_s,
            vocabulary=start.vocabulary if c.vocabulary is None else c.vocabulary,
            diarize=diarize, max_speakers=max_speakers)
        if self.start.language != start.language:
            await self._record(self.phase.value)
        targets = self.targets if c.targets is None else c.targets
        partials = self.translate_partials if c.translate_partials is None else c.translate_partials
        await self._listen(targets, partials)
        await confirm(Configure(targets, self.start.language, partials, self.start.endpoint_ms,
                                self.start.max_utterance_s, self.start.vocabulary, self.start.diarize,
                                self.start.max_speakers))
        self.targets, self.translate_partials = targets, partials

    async def announce(self) -> None:
        """(Re)writes this client's listener record: what the translator translates this stream into."""
        await self._listen(self.targets, self.translate_partials)

    async def _listen(self, targets: tuple[str, ...], partials: bool) -> None:
        """Every lane's listener record, with these targets."""
        for lane in self.lanes:
            await self.services.listeners.put(lane.stream, "owner", targets, partials)

    async def _publish(self, lane: Lane, data: bytes, end: bool, flush: bool = False) -> None:
        assert self.start is not None
        lane.chunk_seq += 1
        lane.published += len(data)
        lane.ended = lane.ended or end
        await self.services.pipeline.publish_session(lane.stream, lane.chunk_seq, data, self.start, end=end,
                                                     flush=flush)

    async def _record(self, status: str) -> bool:
        """Writes this session's KV record, unless a newer connection resumed it. False when it was not written."""
        if self.start is None:
            return False
        try:
            return await self.services.sessions.set_status(self.session_id, status, self.epoch,
                                                           language=self.start.language, edge=self.services.instance)
        except Exception as exc:  # state is advisory here; streaming goes on
            log.warning("%s: session record not written: %s", self.session_id, exc)
            return False

    # ------------------------------------------------------------------ results
    def _receiver(self, lane: Lane) -> Callable[[ClientResult], Awaitable[None]]:
        """A lane's results as the client knows them: under the session's id, tagged with their channel."""
        if len(self.lanes) == 1:
            return self._on_result

        async def deliver(result: ClientResult) -> None:
            await self._on_result(msgspec.structs.replace(result, session_id=self.session_id, channel=lane.channel))

        return deliver

    async def _on_result(self, result: ClientResult) -> None:
        if self._holding is not None:
            self._holding.append(result)
            return
        if result.kind is ResultKind.PARTIAL and self.results.full():
            return  # a slow reader loses partials first; the next partial or the final supersedes it
        await self.results.put(result)

    async def next_result(self) -> ClientResult:
        """The next result not yet handed out (a fan-out that crashed between sending and recording one sends it
        again); after the END, the session is done."""
        while True:
            result = await self.results.get()
            if result.kind is ResultKind.SPEAKERS:  # a correction of a final already out (same seq)
                if self.start is not None and self.start.diarize:
                    return result
                continue
            lane = self.lanes[result.channel] if result.channel < len(self.lanes) else self.lanes[0]
            if result.seq <= lane.last_seq:
                continue
            lane.last_seq = result.seq
            if result.kind is ResultKind.END:
                lane.done = True
                if not all(x.done for x in self.lanes):
                    continue  # the session ends with its last channel
                self.done.set()
                self.phase = Phase.CLOSED
            return result

    @property
    def last_seq(self) -> int:
        """The highest seq handed out (one channel's; a multichannel session's results number per channel)."""
        return self.lanes[0].last_seq if self.lanes else 0

    def wanted(self, result: ClientResult) -> tuple[str, ...]:
        """The translations this client gets with `result`."""
        return self.targets if result.kind is not ResultKind.PARTIAL or self.translate_partials else ()

    # ------------------------------------------------------------------ the end
    async def close(self) -> None:
        """The connection is gone: detach (resumable) or end the session, and let go of everything it held."""
        s = self.services
        live = self.epoch > 0 and not self.done.is_set()  # attached and not finished
        detach = live and self.detach and self.resumable and s.cfg.resume_grace_s > 0
        if live and not self.superseded:
            if detach:
                # The client dropped: it may resume (here or on another edge) within the grace period.
                if await self._record("detached"):
                    assert self.start is not None
                    s.detached.end_later(self.session_id, self.epoch, self.start)
            else:  # an error ended it, or resuming is off: tell the pipeline now so it frees the session
                with contextlib.suppress(Exception):
                    for lane in self.lanes:
                        if not lane.ended or len(self.lanes) == 1:
                            await self._publish(lane, b"", end=True)
        self.phase = Phase.CLOSED
        for lane in self.lanes:
            if lane.sub is not None:
                with contextlib.suppress(Exception):
                    await lane.sub.unsubscribe()
        if self.session_id and not self.superseded:
            s.registry.unregister(self)
            if not detach:
                await self._record("closed")
                for lane in self.lanes:
                    await s.listeners.remove(lane.stream, "owner")
