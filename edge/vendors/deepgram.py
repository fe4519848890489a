"""Deepgram's listen API over Tolk's pipeline: live `GET /v1/listen` (WebSocket) and pre-recorded `POST /v1/listen`.

A Deepgram client is told from a Tolk one at the handshake: Deepgram's SDKs always put their settings in the
query string (`model` at least) and send `Authorization: Token …`; a Tolk client sends at most `?token=`.
The live session is a Tolk `ClientSession` (same admission, per-token limits, KV record, pipeline) that reads
Deepgram's frames and writes Deepgram's messages. Remote audio (`{"url": …}`, `callback`) is refused: the edge
makes no outbound requests (no network egress, and a server that fetches client-given URLs is an SSRF hazard).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from edge import auth
from edge.auth import TokenError
from edge.files import FileError, _remove
from edge.formats import Cue, monotonic
from edge.protocol import MAX_RATE, MIN_RATE, ErrorCode, ProtocolError, Start
from edge.session import ClientSession, Limits, Phase
from edge.vendors.audio import ENCODINGS, PcmDecoder, wav_header
from schemas import ClientResult, Encoding, Endpoint, ResultKind
from schemas.languages import WHISPER_LANGUAGES

if TYPE_CHECKING:
    from edge.app import Edge

log = logging.getLogger("tolk.edge.deepgram")

# Query parameters of Deepgram's /v1/listen. Any of them (or `Authorization: Token`) marks a Deepgram client.
ACCEPTED = frozenset({
    "model", "version", "tier", "language", "encoding", "sample_rate", "channels", "interim_results", "endpointing",
    "utterance_end_ms", "punctuate", "smart_format", "vad_events", "numerals", "profanity_filter", "diarize",
    "diarize_model", "dictation", "filler_words", "keywords", "keyterm", "search", "replace", "redact", "tag", "extra",
    "mip_opt_out", "detect_entities", "no_delay", "detect_language", "utterances", "paragraphs", "language_hint",
    "multichannel", "callback", "callback_method", "summarize", "topics", "intents", "sentiment", "detect_topics",
})
# Deepgram's `opus` / `ogg-opus`: Ogg-encapsulated Opus, decoded by edge/audio_in.py as on Tolk's own protocol.
COMPRESSED = {"opus": "ogg_opus", "ogg-opus": "ogg_opus"}
_TRUE = ("true", "1", "yes")
_LANG = re.compile(r"^([a-zA-Z]{2,3})(?:-[A-Za-z0-9]{2,8})*$")
MODEL_UUID = "00000000-0000-4000-8000-746f6c6b0001"  # a fixed id for "whatever Tolk's STT pool runs"


def is_deepgram(request: web.Request) -> bool:
    return (request.headers.get("Authorization", "")[:6].lower() == "token "
            or any(k in ACCEPTED for k in request.query))


class DeepgramError(Exception):
    """A request-level error in Deepgram's REST shape (`err_code`, `err_msg`, `request_id`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self, request_id: str) -> web.Response:
        return web.json_response({"err_code": self.code, "err_msg": self.message, "request_id": request_id},
                                 status=self.status, headers={"dg-error": self.message, "dg-request-id": request_id})


def _bad(message: str) -> DeepgramError:
    return DeepgramError(400, "Bad Request", message)


@dataclass(frozen=True)
class Options:
    language: str = "en"
    encoding: str | None = None  # None: containerised audio (a WAV header first)
    sample_rate: int = 0
    channels: int = 1
    interim_results: bool = False
    utterance_end_ms: int = 0
    model: str = ""

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
        if flag("multichannel"):
            raise _bad("multichannel is not supported: channels are mixed down to one")
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
        if not 1 <= channels <= 8:
            raise _bad("channels must be 1-8")
        end_ms = number("utterance_end_ms", 0)
        if end_ms < 0:
            raise _bad("utterance_end_ms must be positive")
        return cls(language, encoding, rate, channels, flag("interim_results"), end_ms, q.get("model", ""))


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _word(w: dict[str, Any]) -> dict[str, Any]:
    punctuated = str(w["word"]).strip()
    return {"word": re.sub(r"[^\w'-]+", "", punctuated).lower() or punctuated, "start": w["start"], "end": w["end"],
            "confidence": round(float(w["probability"]), 4), "punctuated_word": punctuated}


def _alternative(text: str, words: list[dict[str, Any]]) -> dict[str, Any]:
    dwords = [_word(w) for w in words]
    confidence = sum(w["confidence"] for w in dwords) / len(dwords) if dwords else (1.0 if text else 0.0)
    return {"transcript": text.strip(), "confidence": round(confidence, 4), "words": dwords}


def _model_info(edge: Edge, language: str) -> dict[str, Any]:
    return {"name": edge.stt_pools.route(language).model, "version": "tolk", "arch": "whisper"}


# ---------------------------------------------------------------------------------------------------- live
class DeepgramSession(ClientSession):
    """Deepgram's live protocol on a Tolk session: audio from the first frame, JSON control messages."""

    def __init__(self, edge: Edge, ws: web.WebSocketResponse, limits: Limits, token: str, opts: Options) -> None:
        super().__init__(edge, ws, limits, token)
        self.opts = opts
        self.request_id = str(uuid.uuid4())
        self.created = _now_iso()
        self.pcm: PcmDecoder | None = None
        self.sample_rate = opts.sample_rate
        self.from_finalize = False
        self.compressed = False  # Opus (Ogg / WebM): the session's own decoder (edge/audio_in.py) takes the bytes
        self.published = 0  # bytes of 16-bit PCM handed to the pipeline (Metadata's `duration`)

    async def _open(self, rate: int, encoding: str, channels: int) -> None:
        self.pcm, self.sample_rate = PcmDecoder(encoding, channels), rate
        await self._begin(Start(sample_rate=rate, encoding=Encoding.PCM_S16LE, language=self.opts.language,
                                session_id=None))

    async def _open_compressed(self, codec: str) -> None:
        self.compressed, self.sample_rate = True, 16000
        await self._begin(Start(sample_rate=16000, encoding=Encoding.PCM_S16LE, language=self.opts.language,
                                session_id=None, codec=codec))

    async def _publish(self, data: bytes, end: bool) -> None:
        self.published += len(data)
        await super()._publish(data, end)

    async def _read_loop(self) -> None:
        # Raw audio and Opus: the session starts now; no `encoding`: at the first frame (a WAV header, or a
        # container the session's decoder sniffs: Ogg / WebM Opus).
        if self.opts.encoding in COMPRESSED:
            await self._open_compressed(COMPRESSED[self.opts.encoding])
        elif self.opts.encoding is not None:
            await self._open(self.opts.sample_rate, self.opts.encoding, self.opts.channels)
        while self.phase is not Phase.CLOSED:
            timeout = self.limits.stop_timeout_s if self.phase is Phase.DRAINING else self.limits.idle_timeout_s
            try:
                msg = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                if self.phase is Phase.DRAINING:
                    raise ProtocolError(ErrorCode.DRAIN_TIMEOUT, "results did not complete in time") from None
                raise ProtocolError(ErrorCode.IDLE_TIMEOUT, f"no audio or KeepAlive for {timeout:.0f} s") from None
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self._audio(bytes(msg.data))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await self._control(msg.data)
            else:  # closed or broken without CloseStream
                return
            if self.done.is_set():
                return

    async def _audio(self, data: bytes) -> None:
        if not data:  # Deepgram's older way of saying CloseStream
            await self._close_stream()
            return
        if self.pcm is None and not self.compressed:
            header = wav_header(data)
            if header is None:  # not WAV: Ogg / WebM Opus, or refused by the sniffing decoder
                await self._open_compressed("file")
                await self._on_audio(data)
                return
            rate, channels, bits, offset = header
            if bits != 16 or not MIN_RATE <= rate <= MAX_RATE or not 1 <= channels <= 8:
                raise ProtocolError(ErrorCode.UNSUPPORTED_ENCODING, f"WAV of {bits}-bit {rate} Hz x{channels}: send "
                                    "16-bit PCM at 8000-48000 Hz")
            await self._open(rate, "linear16", channels)
            data = data[offset:]
        if self.phase is not Phase.STREAMING:
            return  # after CloseStream: being flushed
        if len(data) > self.limits.max_frame_bytes:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame exceeds {self.limits.max_frame_bytes} bytes")
        if self.compressed:
            await self._on_audio(data)
            return
        assert self.pcm is not None
        pcm = self.pcm.feed(data)
        if pcm:
            await self._on_audio(pcm)

    async def _control(self, text: str) -> None:
        try:
            message = json.loads(text)
            kind = message.get("type") if isinstance(message, dict) else None
        except ValueError:
            kind = None
        if kind == "KeepAlive":
            return
        if kind == "Finalize":
            # Tolk has no mid-stream flush: the open utterance ends at its pause as usual; its final says so.
            self.from_finalize = True
            return
        if kind == "CloseStream":
            await self._close_stream()
            return
        await self.fail(ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message {str(kind or text)[:64]!r} ignored: "
                                      "send audio, KeepAlive, Finalize or CloseStream"))

    async def _close_stream(self) -> None:
        if self.phase is Phase.STREAMING:
            await self._drain()
        elif self.phase is Phase.AWAIT_START:  # no audio at all (WAV awaited): nothing to flush
            await self._metadata()
            self.done.set()
            self.phase = Phase.CLOSED
            await self.ws.close()

    async def _cleanup(self) -> None:
        self._detach = False  # Deepgram clients do not resume: a dropped stream is flushed and ended now
        await super()._cleanup()

    # ------------------------------------------------------------------ what the client sees
    def error_json(self, err: ProtocolError) -> dict[str, Any]:
        return {"type": "Error", "variant": err.code.value, "code": err.code.value, "description": err.message,
                "message": err.message, "request_id": self.request_id}

    async def send_started(self, started: dict[str, Any]) -> None:
        return  # Deepgram has no "started": results simply begin

    async def send_result(self, result: ClientResult, targets: tuple[str, ...]) -> None:
        if result.kind is ResultKind.END:
            await self._metadata()
            return
        final = result.kind is ResultKind.FINAL
        if not final and not self.opts.interim_results:
            return
        words = [{"word": w.word, "start": w.start, "end": w.end, "probability": w.probability} for w in result.words]
        out: dict[str, Any] = {
            "type": "Results", "channel_index": [0, 1], "duration": round(max(result.end - result.start, 0.0), 3),
            "start": result.start, "is_final": final,
            "speech_final": final and result.endpoint in (Endpoint.SILENCE, Endpoint.STOP),
            "channel": {"alternatives": [_alternative(result.text, words)]},
            "metadata": {"request_id": self.request_id, "model_info": _model_info(self.edge, self.opts.language),
                         "model_uuid": MODEL_UUID},
        }
        if final and self.from_finalize:
            out["from_finalize"], self.from_finalize = True, False
        await self.ws.send_json(out)
        if final and result.text and self.opts.utterance_end_ms and out["speech_final"]:
            last = result.words[-1].end if result.words else result.end
            await self.ws.send_json({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": last})

    async def _metadata(self) -> None:
        seconds = self.published / 2 / self.sample_rate if self.sample_rate else 0.0
        await self.ws.send_json({
            "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id, "sha256": "",
            "created": self.created, "duration": round(seconds, 3), "channels": self.opts.channels,
            "models": [MODEL_UUID], "model_info": {MODEL_UUID: _model_info(self.edge, self.opts.language)},
        })


async def listen(edge: Edge, request: web.Request, token: str) -> web.StreamResponse:
    """The live WebSocket. Bad settings are refused at the handshake with HTTP 400, as Deepgram does."""
    try:
        opts = Options.parse(request.query)
    except DeepgramError as err:
        edge.metrics.client_errors.labels("deepgram_bad_request").inc()
        return err.response(str(uuid.uuid4()))
    ws = edge.client_socket()
    await ws.prepare(request)
    return await edge.serve_client(ws, DeepgramSession(edge, ws, edge.limits, token, opts), request)


# ---------------------------------------------------------------------------------------------------- pre-recorded
_FILE_ERRORS = {400: (400, "Bad Request"), 413: (413, "PAYLOAD_TOO_LARGE"), 415: (400, "Bad Request"),
                503: (429, "TOO_MANY_REQUESTS"), 504: (504, "TIMEOUT")}


async def prerecorded(edge: Edge, request: web.Request) -> web.StreamResponse:
    """`POST /v1/listen` with the audio as the body: the whole transcript in Deepgram's response shape."""
    request_id = str(uuid.uuid4())
    path = ""
    try:
        opts = Options.parse(request.query)
        if request.content_type == "application/json":
            body = await request.content.read(65536)
            with contextlib.suppress(ValueError):
                if isinstance(json.loads(body), dict) and "url" in json.loads(body):
                    raise _bad("remote audio ({\"url\": …}) is not supported by this server: it makes no outbound "
                               "requests. Send the audio itself as the request body")
            raise _bad("send the audio as the request body (Content-Type: audio/* or application/octet-stream)")
        with edge.files.slot():
            path = await edge.files.store(request.content.read, edge.cfg.max_upload_bytes)
            duration = await edge.files.duration(path)
            cues, language = await edge.files.transcribe(path, opts.language, owner=request.get(auth.TOKEN, ""))
    except DeepgramError as err:
        edge.metrics.client_errors.labels("deepgram_bad_request").inc()
        return err.response(request_id)
    except FileError as err:
        edge.metrics.client_errors.labels(err.code).inc()
        status, code = _FILE_ERRORS.get(err.status, (400, "Bad Request"))
        message = ("failed to process audio: corrupt or unsupported data" if err.status == 415 else err.message)
        return DeepgramError(status, code, message).response(request_id)
    finally:
        if path:
            _remove(path)
    return web.json_response(response(edge, request_id, cues, language, duration,
                                      utterances=request.query.get("utterances", "").lower() in _TRUE))


def response(edge: Edge, request_id: str, cues: list[Cue], language: str, duration: float,
             utterances: bool = False) -> dict[str, Any]:
    ordered = monotonic(cues)
    words = [w for c in ordered for w in c.words]
    channel: dict[str, Any] = {"alternatives": [_alternative(" ".join(c.text for c in ordered), words)]}
    if language and language != "auto":
        channel["detected_language"] = language
    results: dict[str, Any] = {"channels": [channel]}
    if utterances:
        results["utterances"] = [{"id": str(uuid.uuid4()), "start": c.start, "end": c.end, "channel": 0,
                                  **_alternative(c.text, c.words)} for c in ordered]
    return {
        "metadata": {"transaction_key": "deprecated", "request_id": request_id, "sha256": "", "created": _now_iso(),
                     "duration": round(duration, 3), "channels": 1, "models": [MODEL_UUID],
                     "model_info": {MODEL_UUID: _model_info(edge, language or "auto")}},
        "results": results,
    }


def refusal(request: web.Request, err: TokenError) -> web.Response | None:
    """Deepgram's 401 body for a Deepgram client."""
    if request.path != "/v1/listen" or not (is_deepgram(request) or request.method == "POST"):
        return None
    return DeepgramError(401, "INVALID_AUTH", f"Invalid credentials: {err.message}").response(str(uuid.uuid4()))


def routes(edge: Edge) -> list[web.RouteDef]:
    """Pre-recorded `POST /v1/listen` (the live WebSocket shares Tolk's `GET /v1/listen`: see `is_deepgram`)."""

    async def post(request: web.Request) -> web.StreamResponse:
        return await prerecorded(edge, request)

    return [web.post("/v1/listen", post)]
