"""OpenAI's audio API over Tolk's file transcription: `POST /v1/audio/transcriptions` and `/v1/audio/translations`.

The upload, decoding, pacing and results are edge/core/files.py's (`/v1/transcriptions` stays Tolk's own route);
this module only reads OpenAI's form fields and writes OpenAI's bodies, events and errors. `model` is accepted
whatever its name: the STT pool is picked by `language` as for every Tolk session. Translations are Tolk's
translator into English (`targets=["en"]`), so only source languages an installed engine serves work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from edge.core.errors import ApiError
from edge.core.services import Services
from edge.http import auth
from edge.http.auth import TokenError
from edge.http.formats import DIARIZED, FORMATS, Cue, monotonic, render
from edge.http.sse import EventStream, event
from edge.transports import upload
from schemas import ResultKind
from schemas.languages import WHISPER_LANGUAGES

GRANULARITIES = ("word", "segment")
# verbose_json names the language as Whisper does; codes not listed here are given as the code.
NAMES = {"en": "english", "pt": "portuguese", "de": "german", "es": "spanish", "fr": "french", "it": "italian",
         "nl": "dutch", "pl": "polish", "ru": "russian", "uk": "ukrainian", "zh": "chinese", "ja": "japanese",
         "ko": "korean", "ar": "arabic", "tr": "turkish", "sv": "swedish", "hi": "hindi", "ca": "catalan"}


def invalid(message: str, param: str, code: str) -> ApiError:
    """A 400 of OpenAI's own (its `param` and `code`), rendered in OpenAI's shape by `render_error`."""
    return ApiError(400, code, message, param)


def body(err: ApiError) -> dict[str, Any]:
    """`err` in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`. Tolk's file errors (415: an
    undecodable upload, which OpenAI answers with 400) concern the `file`."""
    if err.status == 415:
        return {"error": {"message": f"Invalid file format: {err.message}", "type": "invalid_request_error",
                          "param": "file", "code": "invalid_value"}}
    if err.status >= 500:
        return {"error": {"message": err.message, "type": "server_error", "param": None, "code": err.code}}
    return {"error": {"message": err.message, "type": "invalid_request_error",
                      "param": "file" if err.param is None else err.param or None, "code": err.code}}


def render_error(request: web.Request, err: ApiError) -> web.Response | None:
    """OpenAI's error bodies on its routes."""
    if not request.path.startswith("/v1/audio/"):
        return None
    status = 400 if err.status == 415 else err.status
    headers = {"Retry-After": "10"} if status in (429, 503) else None
    return web.json_response(body(err), status=status, headers=headers)


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
            raise invalid("you must provide a model parameter", "model", "missing_required_parameter")
        language = fields.get("language", "").strip().lower() or "auto"
        if language != "auto" and language not in WHISPER_LANGUAGES:
            raise invalid(f"Invalid language {language!r}: use ISO-639-1 (e.g. 'en')", "language",
                              "invalid_value")
        fmt = fields.get("response_format", "json")
        if fmt not in FORMATS:
            raise invalid(f"response_format {fmt!r} is not supported: use one of {', '.join(FORMATS)}",
                              "response_format", "invalid_value")
        try:
            temperature = float(fields.get("temperature", "0") or 0)
        except ValueError:
            temperature = -1.0
        if not 0.0 <= temperature <= 1.0:
            raise invalid("temperature must be a number from 0 to 1", "temperature", "invalid_value")
        raw = fields.get("timestamp_granularities[]", fields.get("timestamp_granularities", ""))
        granularities = tuple(dict.fromkeys(g.strip() for g in raw.split(",") if g.strip()))
        if any(g not in GRANULARITIES for g in granularities):
            raise invalid("timestamp_granularities[] values must be 'word' or 'segment'",
                              "timestamp_granularities", "invalid_value")
        stream = fields.get("stream", "false").strip().lower()
        if stream not in ("true", "false", "1", "0", ""):
            raise invalid("stream must be true or false", "stream", "invalid_value")
        return cls(model, language, fields.get("prompt", ""), fmt, temperature, granularities or ("segment",),
                   stream in ("true", "1"))


async def _served(services: Services, language: str, targets: tuple[str, ...]) -> None:
    """A source language no translator takes into English is a 400 now, before the file is transcribed (with
    `language` unset, when nothing translates into English at all)."""
    why = (await services.translations.unserved(language, targets)).get("en")
    if why is not None:
        raise invalid(why, "language" if language != "auto" else "", "unsupported_pair")


def _english(cues: list[Cue], language: str) -> list[Cue]:
    """The cues' English translations (for `translations`); an unserved source language is a 400."""
    if language == "en":
        return cues
    missing = [c for c in cues if "en" not in c.translations]
    if missing:
        raise invalid(f"translation from {language!r} into English is not served by this server's "
                          "translation engines (GET /v1/languages lists the pairs served)", "file", "unsupported_pair")
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


async def handle(services: Services, request: web.Request, task: str) -> web.StreamResponse:
    files = services.files
    async with files.upload() as up:
        fields = await upload.multipart(request, up)
        opts = Options.parse(fields)
        targets = ("en",) if task == "translate" else ()
        await _served(services, opts.language, targets)
        duration = await up.duration()
        if opts.stream:
            return await _stream(services, request, up.path, opts, targets, task)
        cues, language = await files.transcribe(up.path, opts.language, targets, opts.prompt,
                                                request.get(auth.TOKEN, ""), diarize=opts.fmt == DIARIZED)
        if task == "translate":
            cues = _english(cues, language)
        if opts.fmt == "verbose_json":
            return web.json_response(verbose(cues, language, duration, opts, task))
        rendered, ctype = render(cues, opts.fmt, language, duration)
        if isinstance(rendered, dict):
            return web.json_response(rendered if task == "translate" else
                                     {**rendered, "usage": {"type": "duration", "seconds": math.ceil(duration)}})
        return web.Response(text=rendered, content_type=ctype.split(";")[0], charset="utf-8")


async def _stream(services: Services, request: web.Request, path: str, opts: Options, targets: tuple[str, ...],
                  task: str) -> web.StreamResponse:
    """OpenAI's streaming events: a `transcript.text.delta` per final (text is only ever appended, so partials,
    which may still change, are not sent), then `transcript.text.done` with the whole text."""
    texts: list[str] = []
    async with EventStream(request, services.cfg.sse_ping_s) as sse:
        try:
            async for r in services.files.run(path, opts.language, targets, opts.prompt, request.get(auth.TOKEN, "")):
                if r.kind is ResultKind.END:
                    break
                if r.kind is not ResultKind.FINAL or not r.text.strip():
                    continue
                text = r.text.strip()
                if task == "translate":
                    text = _english([Cue.of(r)], r.language)[0].text
                await sse.send(event({"type": "transcript.text.delta", "delta": (" " if texts else "") + text}))
                texts.append(text)
            await sse.send(event({"type": "transcript.text.done", "text": " ".join(texts)}))
        except ApiError as err:
            services.metrics.error(err.code)
            await sse.send(event(body(err)))
    return sse.response


def refusal(request: web.Request, err: TokenError) -> web.Response | None:
    """OpenAI's 401 body on its routes."""
    if not request.path.startswith("/v1/audio/"):
        return None
    return web.json_response(body(ApiError(401, "invalid_api_key", f"Incorrect API key provided: {err.message}", "")),
                             status=401)


def routes(services: Services) -> list[web.RouteDef]:
    async def transcriptions(request: web.Request) -> web.StreamResponse:
        return await handle(services, request, "transcribe")

    async def translations(request: web.Request) -> web.StreamResponse:
        return await handle(services, request, "translate")

    return [web.post("/v1/audio/transcriptions", transcriptions), web.post("/v1/audio/translations", translations)]
