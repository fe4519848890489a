"""OpenAI Realtime transcription sessions, `GET /v1/realtime?intent=transcription` (WebSocket), over Tolk's pipeline.

What the `openai` SDK's realtime client and LiveKit Agents' OpenAI STT plugin (realtime mode) speak: the GA
dialect (`session.update` with `session.type: "transcription"`, answered by `session.created/updated`) and the
beta one (`transcription_session.update`, answered by `transcription_session.created/updated`; a client sending
`OpenAI-Beta: realtime=v1` gets the beta names from the start). Audio arrives base64 in
`input_audio_buffer.append` (pcm16 at 24 kHz, G.711 µ-law / A-law at 8 kHz) and goes to a `LiveSession` as raw
PCM; Tolk's partials become `conversation.item.input_audio_transcription.delta` events and its finals
`.completed` items.

An item is what OpenAI transcribes as one: with `server_vad` (or `semantic_vad`) a Tolk utterance, opened by
`input_audio_buffer.speech_started` at its first partial and closed by `speech_stopped`, `committed` and
`completed` at its final; with `turn_detection: null` everything between two `input_audio_buffer.commit`s, Tolk's
own utterances folded into it. A commit is a `LiveSession.flush()`: its final (endpoint `flush`) closes the
committed item, so the transcript of exactly the audio committed comes back. docs/vendors/openai.md says what is
supported, accepted and ignored.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from edge.audio.pcm import PcmDecoder
from edge.core.commands import Configure, Start
from edge.core.errors import ApiError, ErrorCode, ProtocolError
from edge.core.live import Phase, Started
from edge.core.services import Services
from edge.http import auth
from edge.http.auth import TokenError
from edge.transports import socket
from edge.transports.socket import SocketSession
from schemas import ENDPOINT_MS_RANGE, ClientResult, Encoding, Endpoint, ResultKind
from schemas.languages import WHISPER_LANGUAGES

log = logging.getLogger("tolk.edge.openai_realtime")

PATH = "/v1/realtime"
# format name (GA `audio/…` type or beta name) → (beta name, GA type, sample rate, PcmDecoder encoding)
FORMATS: dict[str, tuple[str, str, int, str]] = {}
for _beta, _ga, _rate, _enc in (("pcm16", "audio/pcm", 24000, "linear16"), ("g711_ulaw", "audio/pcmu", 8000, "mulaw"),
                                ("g711_alaw", "audio/pcma", 8000, "alaw")):
    FORMATS[_beta] = FORMATS[_ga] = (_beta, _ga, _rate, _enc)
VAD_TYPES = ("server_vad", "semantic_vad")
DEFAULT_VAD: dict[str, Any] = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                               "silence_duration_ms": 500}
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less than this
MAX_PROMPT_CHARS = 1000  # Whisper reads at most 224 prompt tokens; the text so far takes over after the first final
CLIENT_EVENTS = ("session.update", "transcription_session.update", "input_audio_buffer.append",
                 "input_audio_buffer.commit", "input_audio_buffer.clear")
_TRAILING = re.compile(r"[\s.,!?;:…。，、？！]+$")
# Tolk's codes where OpenAI's session ends too; every other error is reported and the session goes on.
CLOSING = frozenset({ErrorCode.IDLE_TIMEOUT, ErrorCode.DRAIN_TIMEOUT, ErrorCode.SHUTTING_DOWN, ErrorCode.INTERNAL,
                     ErrorCode.OVERLOADED, ErrorCode.TOO_MANY_SESSIONS, ErrorCode.SESSION_IN_USE,
                     ErrorCode.SESSION_RESUMED, ErrorCode.SLOW_CONSUMER, ErrorCode.UNSUPPORTED_LANGUAGE})
SERVER_SIDE = frozenset({ErrorCode.INTERNAL, ErrorCode.DRAIN_TIMEOUT, ErrorCode.SHUTTING_DOWN, ErrorCode.OVERLOADED})


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class RealtimeError(ProtocolError):
    """An error in OpenAI's realtime terms: its `code`, the `param` it concerns, the client event it answers."""

    def __init__(self, code: str, message: str, param: str | None = None, event_id: str | None = None,
                 tolk: ErrorCode = ErrorCode.INVALID_CONFIGURE, closes: bool = False) -> None:
        super().__init__(tolk, message, keep_open=not closes)
        self.oa_code, self.param, self.event_id = code, param, event_id


def _translate(err: ProtocolError) -> RealtimeError:
    if isinstance(err, RealtimeError):
        return err
    return RealtimeError(err.code.value, err.message, None, None, err.code, err.code in CLOSING)


@dataclass(frozen=True)
class Config:
    """A transcription session's settings, as `session.update` left them (stored whole: `session.updated`
    echoes them, including what Tolk accepts and ignores)."""

    format: str = "pcm16"  # beta name
    model: str = "whisper-1"
    language: str = ""  # "": detected
    prompt: str = ""
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_VAD))
    noise_reduction: dict[str, Any] | None = None
    include: list[str] | None = None

    @property
    def rate(self) -> int:
        return FORMATS[self.format][2]

    @property
    def vad(self) -> bool:
        return self.turn_detection is not None

    @property
    def endpoint_ms(self) -> int:
        """The session's endpoint: server_vad's `silence_duration_ms` (OpenAI's default, 500: the server's own,
        TOLK_ENDPOINT_MS); `semantic_vad` or manual commits: the server's."""
        td = self.turn_detection
        if td is None or td.get("type", "server_vad") != "server_vad":
            return 0
        ms = td.get("silence_duration_ms", DEFAULT_VAD["silence_duration_ms"])
        return 0 if ms == DEFAULT_VAD["silence_duration_ms"] else int(ms)

    def update(self, session: Any, event_id: str | None) -> Config:
        """This config with `session` (either dialect) applied; a bad field refuses the whole update."""

        def bad(message: str, param: str, code: str = "invalid_value") -> RealtimeError:
            return RealtimeError(code, message, f"session.{param}", event_id)

        if not isinstance(session, dict):
            raise RealtimeError("invalid_type", "Invalid type for 'session': expected an object.", "session", event_id)
        if session.get("type", "transcription") != "transcription":
            raise bad(f"Invalid value: {session.get('type')!r}. This server serves transcription sessions only "
                      "(type 'transcription', ?intent=transcription).", "type")
        changes: dict[str, Any] = {}
        audio = session.get("audio")
        if audio is not None:  # GA: session.audio.input.{format, transcription, turn_detection, noise_reduction}
            inp = audio.get("input") if isinstance(audio, dict) else None
            if not isinstance(inp, dict):
                raise bad("Invalid type for 'session.audio.input': expected an object.", "audio.input", "invalid_type")
            where = "audio.input."
            fmt, transcription = inp.get("format"), inp.get("transcription")
            has_td, td = "turn_detection" in inp, inp.get("turn_detection")
            has_nr, nr = "noise_reduction" in inp, inp.get("noise_reduction")
            if isinstance(fmt, dict):
                rate = fmt.get("rate")
                if fmt.get("type") == "audio/pcm" and rate not in (None, 24000):
                    raise bad(f"Invalid 'rate': {rate}. Only a 24000 Hz sample rate is supported for audio/pcm.",
                              where + "format.rate")
                fmt = fmt.get("type")
        else:  # beta: input_audio_format, input_audio_transcription, turn_detection, input_audio_noise_reduction
            where = ""
            fmt, transcription = session.get("input_audio_format"), session.get("input_audio_transcription")
            has_td, td = "turn_detection" in session, session.get("turn_detection")
            has_nr, nr = "input_audio_noise_reduction" in session, session.get("input_audio_noise_reduction")
        if fmt is not None:
            if fmt not in FORMATS:
                raise bad(f"Invalid value: {fmt!r}. Supported values are: 'pcm16', 'g711_ulaw', 'g711_alaw' "
                          "('audio/pcm' at 24 kHz, 'audio/pcmu', 'audio/pcma').",
                          where + ("format.type" if where else "input_audio_format"))
            changes["format"] = FORMATS[fmt][0]
        if transcription is not None:
            param = where + ("transcription" if where else "input_audio_transcription")
            if not isinstance(transcription, dict):
                raise bad(f"Invalid type for 'session.{param}': expected an object.", param, "invalid_type")
            language = transcription.get("language", self.language)
            if language is None:
                language = ""
            if not isinstance(language, str) or (language and language.split("-")[0].lower()
                                                 not in WHISPER_LANGUAGES):
                raise bad(f"Invalid value: {language!r}. Expected an ISO-639-1 language code (e.g. 'en').",
                          param + ".language")
            model, prompt = transcription.get("model", self.model), transcription.get("prompt", self.prompt)
            if not isinstance(model, str) or not isinstance(prompt, str | None):
                raise bad("Invalid type: model and prompt must be strings.", param, "invalid_type")
            changes.update(language=language.split("-")[0].lower(), model=model, prompt=prompt or "")
        if has_td:
            param = where + "turn_detection"
            if td is not None:
                if not isinstance(td, dict) or td.get("type", "server_vad") not in VAD_TYPES:
                    raise bad(f"Invalid value: {td.get('type') if isinstance(td, dict) else td!r}. Supported values "
                              "are: 'server_vad', 'semantic_vad' (or null).", param + ".type")
                for key in ("silence_duration_ms", "prefix_padding_ms"):
                    value = td.get(key)
                    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                        raise bad(f"Invalid '{key}': expected a non-negative integer.", f"{param}.{key}")
                silence_ms = td.get("silence_duration_ms")
                lo, hi = ENDPOINT_MS_RANGE
                if silence_ms is not None and not lo <= silence_ms <= hi:
                    raise bad(f"Invalid 'silence_duration_ms': {silence_ms}. This server ends an utterance after "
                              f"{lo}-{hi} ms of silence.", f"{param}.silence_duration_ms")
                td = {**DEFAULT_VAD, **td} if td.get("type", "server_vad") == "server_vad" else dict(td)
            changes["turn_detection"] = td
        if has_nr:
            changes["noise_reduction"] = nr if isinstance(nr, dict) else None
        if "include" in session:
            changes["include"] = session["include"] if isinstance(session["include"], list) else None
        return dataclasses.replace(self, **changes)

    def render(self, beta: bool, session_id: str, expires_at: int) -> dict[str, Any]:
        transcription = {"model": self.model, "language": self.language or None, "prompt": self.prompt}
        if beta:
            return {"id": session_id, "object": "realtime.transcription_session", "expires_at": expires_at,
                    "input_audio_format": self.format, "input_audio_transcription": transcription,
                    "turn_detection": self.turn_detection, "input_audio_noise_reduction": self.noise_reduction,
                    "include": self.include, "modalities": ["text"]}
        ga_format: dict[str, Any] = {"type": FORMATS[self.format][1]}
        if self.format == "pcm16":
            ga_format["rate"] = 24000
        return {"type": "transcription", "id": session_id, "object": "realtime.transcription_session",
                "expires_at": expires_at, "include": self.include,
                "audio": {"input": {"format": ga_format, "transcription": transcription,
                                    "noise_reduction": self.noise_reduction, "turn_detection": self.turn_detection}}}


@dataclass
class Item:
    """One transcribed item: Tolk's finals folded into it so far, and the text its deltas already gave."""

    id: str
    finals: list[str] = field(default_factory=list)
    shown: str = ""
    start: float | None = None
    end: float = 0.0
    started: bool = False  # speech_started sent
    committed: bool = False  # input_audio_buffer.committed sent

    def text(self, partial: str = "") -> str:
        return " ".join(t for t in (*self.finals, partial.strip()) if t)

    def span(self, r: ClientResult) -> None:
        self.start = r.start if self.start is None else min(self.start, r.start)
        self.end = max(self.end, r.end)


@dataclass
class Pending:
    """A flush sent to the pipeline whose final has not come back: a commit (its item: None until a result of
    it arrives, with server VAD) or a clear (what it covers is dropped)."""

    clear: bool
    item: Item | None = None
    closed_any: bool = False  # server VAD closed an item while this commit waited


class RealtimeSession(SocketSession):
    """OpenAI clients do not resume: a dropped socket ends its session at once."""

    resumable = False
    idle_what = "event"

    def __init__(self, services: Services, ws: web.WebSocketResponse, token: str, beta: bool) -> None:
        super().__init__(services, ws, token)
        self.beta = beta
        self.config = Config()
        self.oa_session = _id("sess")
        self.expires_at = int(time.time()) + 30 * 60
        self.pcm: PcmDecoder | None = None
        self.uncommitted = 0  # bytes of PCM appended since the last commit or clear
        self.open: Item | None = None
        self.pending: collections.deque[Pending] = collections.deque()
        self.previous: str | None = None  # the last committed item (previous_item_id)

    # ------------------------------------------------------------------ errors
    def translate(self, err: ProtocolError) -> ProtocolError:
        return _translate(err)

    def error_body(self, err: ProtocolError) -> dict[str, Any]:
        e = _translate(err)
        kind = "server_error" if e.code in SERVER_SIDE and not isinstance(err, RealtimeError) else \
            "invalid_request_error"
        return {"type": "error", "event_id": _id("event"),
                "error": {"type": kind, "code": e.oa_code, "message": e.message, "param": e.param,
                          "event_id": e.event_id}}

    # ------------------------------------------------------------------ client events
    async def opened(self) -> None:
        await self._send("transcription_session.created" if self.beta else "session.created",
                         session=self._session())

    def _session(self) -> dict[str, Any]:
        return self.config.render(self.beta, self.oa_session, self.expires_at)

    async def on_binary(self, data: bytes) -> None:
        await self.fail(RealtimeError("invalid_value", "Binary frames are not supported: send audio base64 in "
                                      "input_audio_buffer.append events.", "audio"))

    async def on_text(self, text: str) -> None:
        event_id: str | None = None
        try:
            try:
                event = json.loads(text)
            except ValueError as exc:
                raise RealtimeError("invalid_json", f"The server could not parse the event as JSON: {exc}") from None
            if not isinstance(event, dict):
                raise RealtimeError("invalid_json", "An event must be a JSON object with a 'type'.")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            await self._dispatch(event, event_id)
        except ProtocolError as err:
            e = _translate(err)
            e.event_id = e.event_id or event_id
            if e.close is not None:
                raise e from None
            await self.fail(e)  # reported; the session goes on, as OpenAI's does

    async def _dispatch(self, event: dict[str, Any], event_id: str | None) -> None:
        kind = event.get("type")
        if kind in ("session.update", "transcription_session.update"):
            await self._update(event.get("session"), event_id, str(kind))
        elif kind == "input_audio_buffer.append":
            await self._append(event.get("audio"), event_id)
        elif kind == "input_audio_buffer.commit":
            await self._commit(event_id)
        elif kind == "input_audio_buffer.clear":
            await self._clear()
        else:
            supported = ", ".join(repr(k) for k in CLIENT_EVENTS)
            raise RealtimeError("invalid_value", f"Invalid value: {str(kind)[:64]!r}. Supported values are: "
                                f"{supported} (a transcription session).", "type", event_id)

    async def _update(self, session: Any, event_id: str | None, kind: str) -> None:
        new = self.config.update(session, event_id)
        if self.phase is not Phase.AWAIT_START:
            if new.format != self.config.format:
                raise RealtimeError("invalid_value", "The input audio format cannot change once audio has been "
                                    "appended: open a new session.", "session.audio.input.format", event_id)
            if new.language != self.config.language and self.phase is Phase.STREAMING:
                async def confirmed(_: Configure) -> None:
                    return None

                await self.live.configure(Configure(targets=None, language=new.language or "auto",
                                                    translate_partials=None), confirmed)
            if new.endpoint_ms != self.config.endpoint_ms and self.phase is Phase.STREAMING:
                async def reconfigured(_: Configure) -> None:
                    return None

                # From the next utterance (0: back to the server's endpoint).
                await self.live.configure(Configure(targets=None, language=None, translate_partials=None,
                                                    endpoint_ms=new.endpoint_ms), reconfigured)
        self.config = new
        self.beta = kind.startswith("transcription_session")  # the dialect of the client's own events from now on
        await self._send("transcription_session.updated" if self.beta else "session.updated", session=self._session())

    async def _append(self, audio: Any, event_id: str | None) -> None:
        if not isinstance(audio, str):
            raise RealtimeError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio",
                                event_id)
        limit = self.limits.max_frame_bytes
        if len(audio) > limit * 4 // 3 + 4:
            raise RealtimeError("invalid_value", f"Invalid 'audio': an append carries at most {limit} bytes of "
                                "audio; send smaller chunks.", "audio", event_id)
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes "
                                f"({self._format_words()}) but got an invalid value.", "audio", event_id) from None
        if not data:
            return
        if self.phase is Phase.AWAIT_START:
            await self._begin()
        assert self.pcm is not None
        pcm = self.pcm.feed(data)
        if pcm and self.phase is Phase.STREAMING:
            await self.live.push(pcm)
            self.uncommitted += len(pcm)

    def _format_words(self) -> str:
        return {"pcm16": "mono PCM16 at 24kHz", "g711_ulaw": "G.711 µ-law at 8kHz",
                "g711_alaw": "G.711 A-law at 8kHz"}[self.config.format]

    async def _begin(self) -> None:
        """The Tolk session starts at the first audio: until then `session.update` may still change the format."""
        cfg = self.config
        self.pcm = PcmDecoder(FORMATS[cfg.format][3], 1)
        await self.begin(Start(sample_rate=cfg.rate, encoding=Encoding.PCM_S16LE, language=cfg.language or "auto",
                               session_id=None, prompt=cfg.prompt[:MAX_PROMPT_CHARS], endpoint_ms=cfg.endpoint_ms))

    async def _commit(self, event_id: str | None) -> None:
        ms = self.uncommitted / 2 / self.config.rate * 1000
        if ms < MIN_COMMIT_MS or self.phase is not Phase.STREAMING:
            raise RealtimeError("input_audio_buffer_commit_empty", "Error committing input audio buffer: buffer "
                                f"too small. Expected at least {MIN_COMMIT_MS}ms of audio, but buffer only has "
                                f"{ms:.2f}ms of audio.", None, event_id)
        self.uncommitted = 0
        if self.config.vad:  # the item is the utterance the flush ends: committed with its final
            self.pending.append(Pending(clear=False))
        else:  # everything appended since the last commit, committed now, transcribed when its flush final is in
            item, self.open = self.open or Item(_id("item")), None
            self.pending.append(Pending(clear=False, item=item))
            await self._committed(item)
        await self.live.flush()

    async def _clear(self) -> None:
        """The uncommitted audio is already in the pipeline: a flush cuts it off, and its results are dropped."""
        self.uncommitted = 0
        if self.phase is Phase.STREAMING:
            self.open = None
            self.pending.append(Pending(clear=True))
            await self.live.flush()
        await self._send("input_audio_buffer.cleared")

    # ------------------------------------------------------------------ results
    async def send_started(self, started: Started) -> None:
        return  # session.created went out at connect

    async def send_result(self, result: ClientResult, targets: tuple[str, ...]) -> None:
        if result.kind is ResultKind.END:
            return
        if result.kind is ResultKind.FINAL and result.endpoint is Endpoint.FLUSH:
            await self._flushed(result)
            return
        if self.pending and self.pending[0].clear:
            return  # audio a clear discarded
        vad = self.config.vad
        text = result.text.strip()
        item = self._target(create=result.kind is ResultKind.PARTIAL or bool(text))
        if item is None:
            return
        item.span(result)
        if vad and not item.started:
            item.started = True
            await self._send("input_audio_buffer.speech_started", audio_start_ms=int((item.start or 0.0) * 1000),
                             item_id=item.id)
        if result.kind is ResultKind.PARTIAL:
            await self._delta(item, item.text(result.text), final=False)
            return
        if text:
            item.finals.append(text)
        await self._delta(item, item.text(), final=True)
        if vad:  # Tolk's endpoint ends the item
            await self._complete(item)
            if self.pending:
                self.pending[0].item, self.pending[0].closed_any = None, True
            else:
                self.open = None

    def _target(self, create: bool) -> Item | None:
        """The item a (non-flush) result belongs to: the oldest commit still waiting for its flush, else the open
        one (created when `create`)."""
        if self.pending:
            head = self.pending[0]
            if head.item is None and create:
                head.item = Item(_id("item"))
            return head.item
        if self.open is None and create:
            self.open = Item(_id("item"))
        return self.open

    async def _flushed(self, result: ClientResult) -> None:
        """The final of a flush: the end of a commit's item, or of what a clear discarded."""
        head = self.pending.popleft() if self.pending else Pending(clear=False, item=self.open)
        if head.clear:
            return
        text = result.text.strip()
        item = head.item
        if item is None:
            if not text and head.closed_any:
                return  # server VAD closed the committed speech already; nothing was left to commit
            item = Item(_id("item"))
        if self.open is item:
            self.open = None
        if text:
            item.finals.append(text)
            item.span(result)
        await self._delta(item, item.text(), final=True)
        await self._complete(item)

    async def _delta(self, item: Item, text: str, final: bool) -> None:
        """Only what the client does not have yet: OpenAI's deltas are appended. A partial's trailing punctuation
        is held back (the next partial usually moves it); a partial that rewrote what was shown sends nothing, and
        `completed` carries the whole final text anyway."""
        target = text if final else _TRAILING.sub("", text)
        if len(target) > len(item.shown) and target.startswith(item.shown):
            delta, item.shown = target[len(item.shown):], target
            await self._send("conversation.item.input_audio_transcription.delta", item_id=item.id, content_index=0,
                             delta=delta)

    async def _committed(self, item: Item) -> None:
        if item.committed:
            return
        item.committed = True
        await self._send("input_audio_buffer.committed", previous_item_id=self.previous, item_id=item.id)
        self.previous = item.id

    async def _complete(self, item: Item) -> None:
        if item.started:
            await self._send("input_audio_buffer.speech_stopped", audio_end_ms=int(item.end * 1000), item_id=item.id)
        await self._committed(item)
        seconds = round(max(item.end - (item.start or item.end), 0.0), 3)
        await self._send("conversation.item.input_audio_transcription.completed", item_id=item.id, content_index=0,
                         transcript=item.text(), usage={"type": "duration", "seconds": seconds})

    async def _send(self, kind: str, **fields: Any) -> None:
        await self.ws.send_json({"type": kind, "event_id": _id("event"), **fields})


def _error(status: int, code: str, message: str, param: str | None = None) -> web.Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}},
                             status=status)


def refusal(request: web.Request, err: TokenError) -> web.Response | None:
    """OpenAI's 401 body at the handshake."""
    if request.path != PATH:
        return None
    return _error(401, "invalid_api_key", f"Incorrect API key provided: {err.message}")


def render_error(request: web.Request, err: ApiError) -> web.Response | None:
    if request.path != PATH:
        return None
    return _error(err.status, err.code, err.message, err.param)


def routes(services: Services) -> list[web.RouteDef]:
    """`GET /v1/realtime`: transcription sessions only (`?intent=transcription`); `model` in the URL is ignored
    (the transcription model is the session's, and the STT pool is picked by language)."""

    async def realtime(request: web.Request) -> web.StreamResponse:
        if request.query.get("intent") != "transcription":
            return _error(400, "invalid_intent", "This server serves realtime transcription sessions only: connect "
                          "with ?intent=transcription.", "intent")
        ws = socket.accept(services)
        if not ws.can_prepare(request).ok:
            return _error(400, "invalid_request", "GET /v1/realtime is a WebSocket: send an Upgrade request.")
        beta = "realtime=v1" in request.headers.get("OpenAI-Beta", "")
        return await socket.serve(request, ws, RealtimeSession(services, ws, request.get(auth.TOKEN, ""), beta))

    return [web.get(PATH, realtime)]
