"""OpenAI's audio API over Tolk's file transcription: `POST /v1/audio/transcriptions` and `/v1/audio/translations`.

The upload, decoding, pacing and results are edge/files.py's (`/v1/transcriptions` stays Tolk's own route);
this module only reads OpenAI's form fields and writes OpenAI's bodies, events and errors. `model` is accepted
whatever its name: the STT pool is picked by `language` as for every Tolk session. Translations are Tolk's
translator into English (`targets=["en"]`), so only source languages an installed engine serves work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edge import auth
from edge.auth import TokenError
from edge.files import FileError, _cue, _remove
from edge.formats import FORMATS, Cue, monotonic, render
from edge.sse import EventStream, event
from schemas import ResultKind
from schemas.languages import WHISPER_LANGUAGES

if TYPE_CHECKING:
    from edge.app import Edge

GRANULARITIES = ("word", "segment")
# verbose_json names the language as Whisper does; codes not listed here are given as the code.
NAMES = {"en": "english", "pt": "portuguese", "de": "german", "es": "spanish", "fr": "french", "it": "italian",
         "nl": "dutch", "pl": "polish", "ru": "russian", "uk": "ukrainian", "zh": "chinese", "ja": "japanese",
         "ko": "korean", "ar": "arabic", "tr": "turkish", "sv": "swedish", "hi": "hindi", "ca": "catalan"}


class OpenAIError(Exception):
    """An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        headers = {"Retry-After": "10"} if self.status in (429, 503) else None
        return web.json_response(self.body(), status=self.status, headers=headers)


def from_file_error(err: FileError) -> OpenAIError:
    if err.status == 415:  # OpenAI answers an undecodable upload with 400
        return OpenAIError(400, f"Invalid file format: {err.message}", "file", "invalid_value")
    if err.status >= 500:
        return OpenAIError(err.status, err.message, None, err.code, "server_error")
    return OpenAIError(err.status, err.message, "file", err.code)  # the 4xx of edge/files.py concern the upload


@dataclass(frozen=True)
class Options:
    model: str
    language: str
    prompt: str
    fmt: str
    temperature: float
    granularities: tuple[str, ...]
    stream: bool

    @classmethod
    def parse(cls, fields: dict[str, str]) -> Options:
        model = fields.get("model", "").strip()
        if not model:
            raise OpenAIError(400, "you must provide a model parameter", "model", "missing_required_parameter")
        language = fields.get("language", "").strip().lower() or "auto"
        if language != "auto" and language not in WHISPER_LANGUAGES:
            raise OpenAIError(400, f"Invalid language {language!r}: use ISO-639-1 (e.g. 'en')", "language",
                              "invalid_value")
        fmt = fields.get("response_format", "json")
        if fmt not in FORMATS:
            raise OpenAIError(400, f"response_format {fmt!r} is not supported: use one of {', '.join(FORMATS)}",
                              "response_format", "invalid_value")
        try:
            temperature = float(fields.get("temperature", "0") or 0)
        except ValueError:
            temperature = -1.0
        if not 0.0 <= temperature <= 1.0:
            raise OpenAIError(400, "temperature must be a number from 0 to 1", "temperature", "invalid_value")
        raw = fields.get("timestamp_granularities[]", fields.get("timestamp_granularities", ""))
        granularities = tuple(dict.fromkeys(g.strip() for g in raw.split(",") if g.strip()))
        if any(g not in GRANULARITIES for g in granularities):
            raise OpenAIError(400, "timestamp_granularities[] values must be 'word' or 'segment'",
                              "timestamp_granularities", "invalid_value")
        stream = fields.get("stream", "false").strip().lower()
        if stream not in ("true", "false", "1", "0", ""):
            raise OpenAIError(400, "stream must be true or false", "stream", "invalid_value")
        return cls(model, language, fields.get("prompt", ""), fmt, temperature, granularities or ("segment",),
                   stream in ("true", "1"))


def _english(cues: list[Cue], language: str) -> list[Cue]:
    """The cues' English translations (for `translations`); an unserved source language is a 400."""
    if language == "en":
        return cues
    missing = [c for c in cues if "en" not in c.translations]
    if missing:
        raise OpenAIError(400, f"translation from {language!r} into English is not served by this server's "
                          "translation engines", "file", "unsupported_language")
    return [Cue(c.start, c.end, c.translations["en"], [], {}) for c in cues]


def verbose(cues: list[Cue], language: str, duration: float, opts: Options, task: str) -> dict[str, Any]:
    ordered = monotonic(cues)
    out: dict[str, Any] = {"task": task, "language": NAMES.get(language, language), "duration": round(duration, 3),
                           "text": " ".join(c.text for c in ordered)}
    if "segment" in opts.granularities:
        out["segments"] = [{
            "id": i, "seek": int(c.start * 100), "start": c.start, "end": c.end, "text": " " + c.text,
            "tokens": [], "temperature": opts.temperature,
            "avg_logprob": round(sum(math.log(max(w["probability"], 1e-6)) for w in c.words) / len(c.words), 4)
            if c.words else 0.0,
            "compression_ratio": 1.0, "no_speech_prob": 0.0,
        } for i, c in enumerate(ordered)]
    if "word" in opts.granularities and task == "transcribe":
        out["words"] = [{"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
                        for c in ordered for w in c.words]
    out["usage"] = {"type": "duration", "seconds": math.ceil(duration)}
    return out


async def handle(edge: Edge, request: web.Request, task: str) -> web.StreamResponse:
    path = ""
    try:
        with edge.files.slot():
            path, fields = await edge.files.receive_multipart(request)
            opts = Options.parse(fields)
            duration = await edge.files.duration(path)
            targets = ("en",) if task == "translate" else ()
            if opts.stream:
                return await _stream(edge, request, path, opts, targets, task)
            cues, language = await edge.files.transcribe(path, opts.language, targets, opts.prompt,
                                                         request.get(auth.TOKEN, ""))
            if task == "translate":
                cues = _english(cues, language)
            if opts.fmt == "verbose_json":
                return web.json_response(verbose(cues, language, duration, opts, task))
            body, ctype = render(cues, opts.fmt, language, duration)
            if isinstance(body, dict):
                return web.json_response(body if task == "translate" else
                                         {**body, "usage": {"type": "duration", "seconds": math.ceil(duration)}})
            return web.Response(text=body, content_type=ctype.split(";")[0], charset="utf-8")
    except FileError as err:
        edge.metrics.client_errors.labels(err.code).inc()
        return from_file_error(err).response()
    except OpenAIError as err:
        edge.metrics.client_errors.labels(err.code or "openai_invalid_request").inc()
        return err.response()
    finally:
        if path:
            _remove(path)


async def _stream(edge: Edge, request: web.Request, path: str, opts: Options, targets: tuple[str, ...],
                  task: str) -> web.StreamResponse:
    """OpenAI's streaming events: a `transcript.text.delta` per final (text is only ever appended, so partials,
    which may still change, are not sent), then `transcript.text.done` with the whole text."""
    texts: list[str] = []
    async with EventStream(request, edge.cfg.sse_ping_s) as sse:
        try:
            async for r in edge.files.run(path, opts.language, targets, opts.prompt, request.get(auth.TOKEN, "")):
                if r.kind is ResultKind.END:
                    break
                if r.kind is not ResultKind.FINAL or not r.text.strip():
                    continue
                text = r.text.strip()
                if task == "translate":
                    text = _english([_cue(r)], r.language)[0].text
                await sse.send(event({"type": "transcript.text.delta", "delta": (" " if texts else "") + text}))
                texts.append(text)
            await sse.send(event({"type": "transcript.text.done", "text": " ".join(texts)}))
        except FileError as err:
            edge.metrics.client_errors.labels(err.code).inc()
            await sse.send(event(from_file_error(err).body()))
        except OpenAIError as err:
            await sse.send(event(err.body()))
    return sse.response


def refusal(request: web.Request, err: TokenError) -> web.Response | None:
    """OpenAI's 401 body on its routes."""
    if not request.path.startswith("/v1/audio/"):
        return None
    return OpenAIError(401, f"Incorrect API key provided: {err.message}", None, "invalid_api_key").response()


def routes(edge: Edge) -> list[web.RouteDef]:
    async def transcriptions(request: web.Request) -> web.StreamResponse:
        return await handle(edge, request, "transcribe")

    async def translations(request: web.Request) -> web.StreamResponse:
        return await handle(edge, request, "translate")

    return [web.post("/v1/audio/transcriptions", transcriptions), web.post("/v1/audio/translations", translations)]
