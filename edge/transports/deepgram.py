"""Deepgram's listen API over Tolk's pipeline: live `GET /v1/listen` (WebSocket) and pre-recorded `POST /v1/listen`.

A Deepgram client is told from a Tolk one at the handshake: Deepgram's SDKs always put their settings in the
query string (`model` at least) and send `Authorization: Token …`; a Tolk client sends at most `?token=`.
The live session is a `SocketSession` (edge/transports/socket.py: the same admission, per-token limits, KV
record, pipeline as every API) that reads Deepgram's frames and writes Deepgram's messages. Remote audio
(`{"url": …}`, `callback`) is refused: the edge makes no outbound requests (no network egress, and a server
that fetches client-given URLs is an SSRF hazard).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from edge.audio.decoders import container_channels
from edge.audio.pcm import ENCODINGS, MAX_CHANNELS, MAX_RATE, MIN_RATE, PcmDecoder
from edge.core.commands import Start, parse_vocabulary
from edge.core.errors import ApiError, ErrorCode, ProtocolError
from edge.core.live import Phase, Started
from edge.core.services import Services
from edge.http import auth
from edge.http.auth import TokenError
from edge.http.formats import Cue, monotonic
from edge.transports import socket, upload
from edge.transports.socket import SocketSession
from schemas import ENDPOINT_MS_RANGE, NO_ENDPOINT, ClientResult, Encoding, Endpoint, ResultKind, Word
from schemas.languages import WHISPER_LANGUAGES

log = logging.getLogger("tolk.edge.deepgram")

# Query parameters of Deepgram's /v1/listen. Any of them (or `Authorization: Token`) marks a Deepgram client.
ACCEPTED = frozenset({
    "model", "version", "tier", "language", "encoding", "sample_rate", "channels", "interim_results", "endpointing",
    "utterance_end_ms", "punctuate", "smart_format", "vad_events", "numerals", "profanity_filter", "diarize",
    "diarize_model", "dictation", "filler_words", "keywords", "keyterm", "search", "replace", "redact", "tag", "extra",
    "mip_opt_out", "detect_entities", "no_delay", "detect_language", "utterances", "paragraphs", "language_hint",
    "multichannel", "callback", "callback_method", "summarize", "topics", "intents", "sentiment", "detect_topics",
})
# Deepgram's `opus` / `ogg-opus`: Ogg-encapsulated Opus, decoded by edge/audio as on Tolk's own protocol.
COMPRESSED = {"opus": "ogg_opus", "ogg-opus": "ogg_opus"}
_TRUE = ("true", "1", "yes")
_LANG = re.compile(r"^([a-zA-Z]{2,3})(?:-[A-Za-z0-9]{2,8})*$")
_BOOST = re.compile(r":-?\d+(\.\d+)?$")  # `keywords=Tolk:2`
UTTERANCE_END_LAG_S = 0.5  # how long the first result of resumed speech may take to arrive (see _utterance_end)
MODEL_UUID = "00000000-0000-4000-8000-746f6c6b0001"  # a fixed id for "whatever Tolk's STT pool runs"


def is_deepgram(request: web.Request) -> bool:
    return (request.headers.get("Authorization", "")[:6].lower() == "token "
            or any(k in ACCEPTED for k in request.query))


BAD_REQUEST = "deepgram_bad_request"  # Deepgram's own request errors (its err_code is "Bad Request")


def _bad(message: str) -> ApiError:
    return ApiError(400, BAD_REQUEST, message)


@dataclass(frozen=True)
class Options:
    language: str = "en"
    encoding: str | None = None  # None: containerised audio (a WAV header first)
    sample_rate: int = 0
    channels: int = 1
    interim_results: bool = False
    utterance_end_ms: int = 0
    model: str = ""
    endpoint_ms: int = 0  # `endpointing` (0: the server's; NO_ENDPOINT: `false`)
    vocabulary: tuple[str, ...] = ()  # `keyterm` and `keywords` (their `:boost` dropped: Whisper has no weights)
    diarize: bool = False  # `diarize=true`: words[].speaker (0-based) and speaker_confidence
    # `multichannel=true`: each of `channels` transcribed on its own, every result with its `channel_index` [i, N]
    # (else the channels are mixed down to one, as Deepgram does without it).
    multichannel: bool = False
    channels_given: bool = False  # `channels` was in the query (containerised audio: else read from the container)

    @classmethod
    def parse(cls, q: Any) -> Options:
        def flag(name: str, default: bool = False) -> bool:
            value = q.get(name)
            if value is None:
                return default
            if value.lower() not in (*_TRUE, "false", "0", "no"):
                raise _bad(f"{name} must be true or false")
            return value.lower() in _TRUE

        def number(name: str, default: int) -> int:
            try:
                return int(q.get(name, default))
            except ValueError:
                raise _bad(f"{name} must be an integer") from None

        if q.get("callback"):
            raise _bad("callback is not supported by this server: it makes no outbound requests; read the response")
        language = q.get("language", "en")
        if flag("detect_language") or language == "multi":
            language = "auto"
        elif (m := _LANG.match(language)) is None or m.group(1).lower() not in WHISPER_LANGUAGES:
            raise _bad(f"language {language!r} is not supported")
        else:
            language = m.group(1).lower()
        encoding = q.get("encoding") or None
        if encoding is not None and encoding not in ENCODINGS and encoding not in COMPRESSED:
            raise _bad(f"encoding {encoding!r} is not supported: use one of {', '.join([*ENCODINGS, *COMPRESSED])}, "
                       "or send a WAV, Ogg Opus or WebM Opus stream without `encoding`")
        rate, channels = number("sample_rate", 0), number("channels", 1)
        if encoding in ENCODINGS and not MIN_RATE <= rate <= MAX_RATE:
            raise _bad(f"sample_rate must be {MIN_RATE}-{MAX_RATE} with encoding={encoding}" if rate else
                       "sample_rate is required with encoding")
        if not 1 <= channels <= MAX_CHANNELS:
            raise _bad(f"channels must be 1-{MAX_CHANNELS}")
        multichannel = flag("multichannel")
        end_ms = number("utterance_end_ms", 0)
        if end_ms < 0:
            raise _bad("utterance_end_ms must be positive")
        return cls(language, encoding, rate, channels, flag("interim_results"), end_ms, q.get("model", ""),
                   _endpointing(q.get("endpointing")), _vocabulary(q), flag("diarize"), multichannel,
                   "channels" in q)


def _vocabulary(q: Any) -> tuple[str, ...]:
    """`keyterm=...` (repeated) and `keywords=word:boost` (repeated) as one vocabulary; over the bounds: 400."""
    terms = [*q.getall("keyterm", []), *(_BOOST.sub("", k) for k in q.getall("keywords", []))]
    try:
        return parse_vocabulary(terms, ErrorCode.INVALID_VOCABULARY)
    except ProtocolError as err:
        raise _bad(f"keyterm / keywords: {err.message}") from None


def _endpointing(value: str | None) -> int:
    """`endpointing`: ms of silence that end an utterance, `false` (pauses never do: only the longest utterance,
    Finalize or CloseStream), or `true` (the default: the server's). Outside Tolk's bounds: 400."""
    if value is None or value.lower() in _TRUE:
        return 0
    if value.lower() in ("false", "0", "no"):
        return NO_ENDPOINT
    try:
        endpoint_ms = int(value)
    except ValueError:
        raise _bad("endpointing must be an integer (ms) or false") from None
    lo, hi = ENDPOINT_MS_RANGE
    if not lo <= endpoint_ms <= hi:
        raise _bad(f"endpointing must be {lo}-{hi} ms on this server (or false)")
    return endpoint_ms


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _word(w: dict[str, Any]) -> dict[str, Any]:
    punctuated = str(w["word"]).strip()
    out = {"word": re.sub(r"[^\w'-]+", "", punctuated).lower() or punctuated, "start": w["start"], "end": w["end"],
           "confidence": round(float(w["probability"]), 4), "punctuated_word": punctuated}
    if w.get("speaker"):  # diarize=true: Deepgram numbers speakers from 0 (Tolk's S1 is 0)
        out["speaker"] = int(str(w["speaker"]).lstrip("S")) - 1
        out["speaker_confidence"] = round(float(w.get("speaker_confidence", 0.0)), 4)
    return out


def word_dict(w: Word) -> dict[str, Any]:
    """A Tolk word as _word reads it (the speaker's fields only on diarized sessions' words)."""
    out: dict[str, Any] = {"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
    if w.speaker:
        out["speaker"], out["speaker_confidence"] = w.speaker, w.speaker_confidence
    return out


def _alternative(text: str, words: list[dict[str, Any]]) -> dict[str, Any]:
    dwords = [_word(w) for w in words]
    confidence = sum(w["confidence"] for w in dwords) / len(dwords) if dwords else (1.0 if text else 0.0)
    return {"transcript": text.strip(), "confidence": round(confidence, 4), "words": dwords}


def _model_info(services: Services, language: str) -> dict[str, Any]:
    return {"name": services.admission.model(language), "version": "tolk", "arch": "whisper"}


# ---------------------------------------------------------------------------------------------------- live
class DeepgramSession(SocketSession):
    """Deepgram's live protocol: audio from the first frame, JSON control messages. Deepgram clients do not
    resume: a dropped stream is flushed and ended at once."""

    resumable = False
    idle_what = "audio or KeepAlive"

    def __init__(self, services: Services, ws: web.WebSocketResponse, token: str, opts: Options) -> None:
        super().__init__(services, ws, token)
        self.opts = opts
        self.request_id = str(uuid.uuid4())
        self.created = _now_iso()
        self.pcm: PcmDecoder | None = None  # raw audio (`encoding`): mixed down here (or kept: multichannel)
        self.sample_rate = opts.sample_rate
        # utterance_end_ms, per channel: the last final's last word (stream seconds, utterance id) while its
        # UtteranceEnd waits, and when that final arrived (monotonic).
        self.word_end: dict[int, tuple[float, int]] = {}
        self.word_end_at: dict[int, float] = {}
        # multichannel=true, no `channels`, a file: its first messages, held until its header says how many.
        self.head: list[bytes] = []

    async def opened(self) -> None:
        # Raw audio and Opus: the session starts now; no `encoding`: at the first frame (a WAV, Ogg Opus or WebM
        # Opus stream, which the session's decoder sniffs from its first bytes).
        if self.opts.encoding in COMPRESSED:
            await self._open(COMPRESSED[self.opts.encoding], self.channels)
        elif self.opts.encoding is not None:
            self.pcm = PcmDecoder(self.opts.encoding, self.opts.channels, keep=self.opts.multichannel)
            await self.begin(Start(sample_rate=self.opts.sample_rate, encoding=Encoding.PCM_S16LE,
                                   language=self.opts.language, session_id=None, endpoint_ms=self.opts.endpoint_ms,
                                   vocabulary=self.opts.vocabulary, diarize=self.opts.diarize,
                                   channels=self.channels))

    @property
    def channels(self) -> int:
        """Pipelines: the audio's channels with multichannel=true, else one (mixed down)."""
        return self.opts.channels if self.opts.multichannel else 1

    async def _open(self, codec: str, channels: int) -> None:
        self.sample_rate = 16000
        await self.begin(Start(sample_rate=16000, encoding=Encoding.PCM_S16LE, language=self.opts.language,
                               session_id=None, codec=codec, endpoint_ms=self.opts.endpoint_ms,
                               vocabulary=self.opts.vocabulary, diarize=self.opts.diarize, channels=channels))

    async def on_binary(self, data: bytes) -> None:
        if not data:  # Deepgram's older way of saying CloseStream
            await self._close_stream()
            return
        if self.phase is Phase.AWAIT_START:
            if self.opts.multichannel and not self.opts.channels_given:  # as many as the container says
                self.head.append(data)
                await self._open_file(final=False)
                return
            await self._open("file", self.channels)
        if self.pcm is None:
            await self.live.push(data)
        else:
            if self.phase is not Phase.STREAMING:
                return  # after CloseStream: being flushed
            if len(data) > self.limits.max_frame_bytes:
                raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame exceeds {self.limits.max_frame_bytes} bytes")
            pcm = self.pcm.feed(data)
            if pcm:
                await self.live.push(pcm)
        await self._utterance_end()

    async def _open_file(self, final: bool) -> None:
        """Opens a multichannel file session once the messages held in `head` tell its channel count (or `final`:
        no more will come; the file does not say: one), then pushes them as they came."""
        found = container_channels(b"".join(self.head))
        if found is None and not final:
            return  # the header is not all in yet (container_channels bounds the wait)
        self.opts = dataclasses.replace(self.opts, channels=found or 1)
        await self._open("file", self.channels)
        head, self.head = self.head, []
        for data in head:
            await self.live.push(data)
        await self._utterance_end()

    async def on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
            kind = message.get("type") if isinstance(message, dict) else None
        except ValueError:
            kind = None
        if kind == "KeepAlive":
            await self._utterance_end()
            return
        if kind == "Finalize":
            if self.phase is Phase.STREAMING:  # before any audio there is nothing to finalize
                await self.live.flush()
            return
        if kind == "CloseStream":
            await self._close_stream()
            return
        await self.fail(ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message {str(kind or text)[:64]!r} ignored: "
                                      "send audio, KeepAlive, Finalize or CloseStream"))

    async def _close_stream(self) -> None:
        if self.phase is Phase.AWAIT_START and self.head:  # a file's first bytes, its header short
            await self._open_file(final=True)
        if self.phase is Phase.STREAMING:
            await self.live.stop()
        elif self.phase is Phase.AWAIT_START:  # no audio at all (a file awaited): nothing to flush
            await self._metadata()
            self.live.done.set()
            self.live.phase = Phase.CLOSED
            await self.ws.close()

    # ------------------------------------------------------------------ what the client sees
    def error_body(self, err: ProtocolError) -> dict[str, Any]:
        return {"type": "Error", "variant": err.code.value, "code": err.code.value, "description": err.message,
                "message": err.message, "request_id": self.request_id}

    async def send_started(self, started: Started) -> None:
        return  # Deepgram has no "started": results simply begin

    async def send_result(self, result: ClientResult, targets: tuple[str, ...]) -> None:
        if result.kind is ResultKind.SPEAKERS:
            return  # Deepgram has no message that relabels words already sent
        if result.kind is ResultKind.END:
            await self._utterance_end(lag=0.0)  # the stream ended: nothing can follow the last word any more
            await self._metadata()
            return
        channel = result.channel
        word_end = self.word_end.get(channel)
        if word_end is not None and result.text.strip() and result.utterance_id != word_end[1]:
            # Speech resumed: the earlier words get their UtteranceEnd only if the gap before it was long enough.
            if (result.speech_start or result.start) >= word_end[0] + self.opts.utterance_end_ms / 1000:
                await self._send_utterance_end(channel)
            self.word_end.pop(channel, None)
        final = result.kind is ResultKind.FINAL
        if not final and not self.opts.interim_results:
            return
        words = [word_dict(w) for w in result.words]
        out: dict[str, Any] = {
            "type": "Results", "channel_index": [channel, self.channels],
            "duration": round(max(result.end - result.start, 0.0), 3),
            "start": result.start, "is_final": final,
            "speech_final": final and result.endpoint in (Endpoint.SILENCE, Endpoint.STOP),
            "channel": {"alternatives": [_alternative(result.text, words)]},
            "metadata": {"request_id": self.request_id, "model_info": _model_info(self.services, self.opts.language),
                         "model_uuid": MODEL_UUID},
        }
        if final and result.endpoint is Endpoint.FLUSH:
            out["from_finalize"] = True
        await self.ws.send_json(out)
        if final and result.text.strip() and self.opts.utterance_end_ms:
            self.word_end[channel] = (result.words[-1].end if result.words else result.end, result.utterance_id)
            self.word_end_at[channel] = time.monotonic()
            await self._utterance_end()

    async def _utterance_end(self, lag: float = UTTERANCE_END_LAG_S) -> None:
        """UtteranceEnd once utterance_end_ms of audio after the last final word has arrived, and `lag` more, and
        `lag` has passed since that final: the time the first result of speech that resumed in the gap takes to
        get here (it decides instead, by where that speech starts). Checked as audio, KeepAlive and results come;
        each channel on its own."""
        if not self.word_end or not self.sample_rate:
            return
        received = self.live.published / 2 / self.sample_rate
        for channel, (end, _) in list(self.word_end.items()):
            if received >= end + self.opts.utterance_end_ms / 1000 + lag \
                    and time.monotonic() - self.word_end_at[channel] >= lag:
                await self._send_utterance_end(channel)

    async def _send_utterance_end(self, channel: int) -> None:
        end, _ = self.word_end.pop(channel)
        await self.ws.send_json({"type": "UtteranceEnd", "channel": [channel, self.channels], "last_word_end": end})

    async def _metadata(self) -> None:
        seconds = self.live.published / 2 / self.sample_rate if self.sample_rate else 0.0
        await self.ws.send_json({
            "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id, "sha256": "",
            "created": self.created, "duration": round(seconds, 3), "channels": self.opts.channels,
            "models": [MODEL_UUID], "model_info": {MODEL_UUID: _model_info(self.services, self.opts.language)},
        })


def live(services: Services) -> socket.Handler:
    """The live WebSocket. Bad settings are refused at the handshake with HTTP 400, as Deepgram does."""

    async def handle(request: web.Request) -> web.StreamResponse:
        opts = Options.parse(request.query)
        ws = socket.accept(services)
        return await socket.serve(request, ws, DeepgramSession(services, ws, request.get(auth.TOKEN, ""), opts))

    return handle


# ---------------------------------------------------------------------------------------------------- pre-recorded
_STATUS = {400: (400, "Bad Request"), 401: (401, "INVALID_AUTH"), 413: (413, "PAYLOAD_TOO_LARGE"),
           415: (400, "Bad Request"), 503: (429, "TOO_MANY_REQUESTS"), 504: (504, "TIMEOUT")}


async def prerecorded(services: Services, request: web.Request) -> web.StreamResponse:
    """`POST /v1/listen` with the audio as the body: the whole transcript in Deepgram's response shape."""
    opts = Options.parse(request.query)
    if request.content_type == "application/json":
        body = await request.content.read(65536)
        with contextlib.suppress(ValueError):
            if isinstance(json.loads(body), dict) and "url" in json.loads(body):
                raise _bad("remote audio ({\"url\": …}) is not supported by this server: it makes no outbound "
                           "requests. Send the audio itself as the request body")
        raise _bad("send the audio as the request body (Content-Type: audio/* or application/octet-stream)")
    owner = request.get(auth.TOKEN, "")
    async with services.files.upload() as up:
        await upload.body(request, up)
        duration = await up.duration()
        if opts.multichannel:  # each channel on its own, as Deepgram does: results.channels[i]
            per_channel = await services.files.transcribe_channels(up.path, opts.language, owner=owner,
                                                                   diarize=opts.diarize)
        else:
            per_channel = [await services.files.transcribe(up.path, opts.language, owner=owner,
                                                           diarize=opts.diarize)]
    return web.json_response(response(services, str(uuid.uuid4()), per_channel, duration,
                                      utterances=request.query.get("utterances", "").lower() in _TRUE))


def response(services: Services, request_id: str, per_channel: list[tuple[list[Cue], str]], duration: float,
             utterances: bool = False) -> dict[str, Any]:
    """`per_channel`: each channel's cues and language (one entry: the file mixed down to one channel)."""
    channels: list[dict[str, Any]] = []
    spoken: list[dict[str, Any]] = []
    for i, (cues, language) in enumerate(per_channel):
        ordered = monotonic(cues)
        words = [w for c in ordered for w in c.words]
        channel: dict[str, Any] = {"alternatives": [_alternative(" ".join(c.text for c in ordered), words)]}
        if language and language != "auto":
            channel["detected_language"] = language
        channels.append(channel)
        spoken += [{"id": str(uuid.uuid4()), "start": c.start, "end": c.end, "channel": i,
                    **_alternative(c.text, c.words)} for c in ordered]
    results: dict[str, Any] = {"channels": channels}
    if utterances:
        results["utterances"] = sorted(spoken, key=lambda u: (u["start"], u["channel"]))
    language = next((lang for _, lang in per_channel if lang and lang != "auto"), "auto")
    return {
        "metadata": {"transaction_key": "deprecated", "request_id": request_id, "sha256": "", "created": _now_iso(),
                     "duration": round(duration, 3), "channels": len(channels), "models": [MODEL_UUID],
                     "model_info": {MODEL_UUID: _model_info(services, language)}},
        "results": results,
    }


def _mine(request: web.Request) -> bool:
    return request.path == "/v1/listen" and (is_deepgram(request) or request.method == "POST")


def _error(status: int, code: str, message: str) -> web.Response:
    request_id = str(uuid.uuid4())
    return web.json_response({"err_code": code, "err_msg": message, "request_id": request_id}, status=status,
                             headers={"dg-error": message, "dg-request-id": request_id})


def render_error(request: web.Request, err: ApiError) -> web.Response | None:
    """Deepgram's REST error shape (`err_code`, `err_msg`, `request_id`) on its routes."""
    if not _mine(request):
        return None
    status, code = _STATUS.get(err.status, (400, "Bad Request"))
    return _error(status, code, "failed to process audio: corrupt or unsupported data" if err.status == 415
                  else err.message)


def refusal(request: web.Request, err: TokenError) -> web.Response | None:
    """Deepgram's 401 body for a Deepgram client."""
    if not _mine(request):
        return None
    return _error(401, "INVALID_AUTH", f"Invalid credentials: {err.message}")


def routes(services: Services) -> list[web.RouteDef]:
    """Pre-recorded `POST /v1/listen` (the live WebSocket shares Tolk's `GET /v1/listen`: see `is_deepgram`)."""

    async def post(request: web.Request) -> web.StreamResponse:
        return await prerecorded(services, request)

    return [web.post("/v1/listen", post)]
