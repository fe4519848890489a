"""Tolk's own protocol on `GET /v1/listen`, as pure functions: JSON frames -> commands, results -> JSON.

Kept free of aiohttp and NATS so every rule (and every error code) is unit-testable.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from actors.runtime.partition import valid_session_id
from edge.audio.decoders import COMPRESSED, RATE
from edge.audio.pcm import MAX_RATE, MIN_RATE
from edge.core.commands import (
    Configure,
    Flush,
    Start,
    Stop,
    Subscribe,
    check_audio,
    check_channels,
    check_diarization,
    check_endpointing,
    decode_base64,
    parse_language,
    parse_targets,
    parse_vocabulary,
)
from edge.core.errors import CLOSE_FOR, Close, ErrorCode, ProtocolError
from schemas import NO_ENDPOINT, ClientResult, Encoding, ResultKind, Word

__all__ = ["CLOSE_FOR", "Close", "ErrorCode", "ProtocolError", "Start", "Stop", "check_audio"]


@dataclass(frozen=True)
class Audio:
    data: bytes


@dataclass(frozen=True)
class Unknown:
    type: str


ClientMessage = Start | Configure | Subscribe | Stop | Flush | Audio | Unknown


def parse_text(text: str, max_frame: int) -> ClientMessage:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"text frames must be JSON objects: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(ErrorCode.INVALID_JSON, 'text frames must be JSON objects with a string "type"')
    kind = obj["type"]
    if kind == "start":
        return parse_start(obj)
    if kind in ("configure", "set_langs"):  # set_langs: the seed design's name
        return parse_configure(obj)
    if kind == "subscribe":
        return parse_subscribe(obj)
    if kind == "unsubscribe":
        return Stop()
    if kind == "stop":
        return Stop()
    if kind == "flush":
        return Flush()
    if kind == "audio":
        return Audio(decode_base64(obj.get("data"), max_frame))
    return Unknown(kind)


def parse_start(obj: dict[str, Any]) -> Start:
    rate = obj.get("sample_rate", 16000)
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise ProtocolError(ErrorCode.INVALID_START, "sample_rate must be an integer")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_SAMPLE_RATE, f"sample_rate {rate} outside {MIN_RATE}-{MAX_RATE} Hz"
        )
    enc = obj.get("encoding", Encoding.PCM_S16LE.value)
    codec = ""
    if enc in COMPRESSED:  # decoded at the edge: the pipeline gets 16 kHz s16le whatever the client's rate
        codec, encoding, rate = enc, Encoding.PCM_S16LE, RATE
    else:
        try:
            encoding = Encoding(enc)
        except ValueError:
            supported = ", ".join([*(e.value for e in Encoding), *COMPRESSED])
            raise ProtocolError(ErrorCode.UNSUPPORTED_ENCODING,
                                f"encoding {enc!r} not supported ({supported})") from None
    language = parse_language(obj.get("language", "auto"), ErrorCode.UNSUPPORTED_LANGUAGE)
    sid = obj.get("session_id")
    if sid is not None and (not isinstance(sid, str) or not valid_session_id(sid)):
        raise ProtocolError(ErrorCode.INVALID_SESSION_ID, "session_id must be 1-64 chars of A-Z a-z 0-9 _ -")
    targets = parse_targets(obj.get("targets", []), ErrorCode.INVALID_TARGETS)
    partials = obj.get("translate_partials", False)
    if not isinstance(partials, bool):
        raise ProtocolError(ErrorCode.INVALID_START, "translate_partials must be true or false")
    resume = obj.get("resume_from")
    if resume is not None:
        if isinstance(resume, bool) or not isinstance(resume, int) or resume < 0:
            raise ProtocolError(ErrorCode.INVALID_START, "resume_from must be the last seq received (an integer >= 0)")
        if sid is None:
            raise ProtocolError(ErrorCode.INVALID_START, "resume_from needs the session_id to resume")
    token = obj.get("resume_token", "")
    if resume is not None and (not isinstance(token, str) or not 1 <= len(token) <= 64):
        raise ProtocolError(ErrorCode.INVALID_START, "resume_from needs the resume_token from the session's `started`")
    endpoint_ms, max_s = parse_endpointing(obj, ErrorCode.INVALID_START)
    vocabulary = parse_vocabulary(obj.get("vocabulary", []), ErrorCode.INVALID_VOCABULARY)
    diarize, max_speakers = check_diarization(obj.get("diarize", False), obj.get("max_speakers"),
                                              ErrorCode.INVALID_DIARIZATION)
    channels = check_channels(obj.get("channels", 1), ErrorCode.UNSUPPORTED_CHANNELS)
    if channels > 1 and resume is not None:
        raise ProtocolError(ErrorCode.UNSUPPORTED_CHANNELS, "multichannel sessions cannot be resumed; start a new one")
    return Start(rate, encoding, language, sid, targets, partials, resume, token if resume is not None else "",
                 codec, endpoint_ms or 0, max_s or 0.0, vocabulary, diarize=diarize, max_speakers=max_speakers,
                 channels=channels)


def parse_endpointing(obj: dict[str, Any], code: ErrorCode) -> tuple[int | None, float | None]:
    """`endpoint_ms` (milliseconds, or false: pauses never end an utterance) and `max_utterance_s`; None where
    left out (or null): the server's."""
    endpoint_ms, max_s = obj.get("endpoint_ms"), obj.get("max_utterance_s")
    if endpoint_ms is False:
        endpoint_ms = NO_ENDPOINT
    elif endpoint_ms is not None and (isinstance(endpoint_ms, bool) or not isinstance(endpoint_ms, int)
                                      or endpoint_ms < 0):
        raise ProtocolError(code, "endpoint_ms must be an integer (ms) or false")
    if max_s is not None and (isinstance(max_s, bool) or not isinstance(max_s, int | float)):
        raise ProtocolError(code, "max_utterance_s must be a number (seconds)")
    check_endpointing(endpoint_ms or 0, max_s or 0.0, code)
    if endpoint_ms == 0 or max_s == 0:
        raise ProtocolError(code, "leave endpoint_ms and max_utterance_s out (or null) for the server's default")
    return endpoint_ms, None if max_s is None else float(max_s)


def parse_subscribe(obj: dict[str, Any]) -> Subscribe:
    code = ErrorCode.INVALID_SUBSCRIBE
    if "diarize" in obj or "max_speakers" in obj:
        raise ProtocolError(ErrorCode.INVALID_DIARIZATION, "a channel's listeners get its captions as they are: "
                            "speaker labels are asked for by whoever streams the audio (start's diarize)")
    if "channels" in obj:
        raise ProtocolError(ErrorCode.INVALID_SUBSCRIBE, "a listener sends no audio: \"channels\" belongs in the "
                            "start of a session that streams multichannel audio")
    channel = obj.get("channel")
    if not isinstance(channel, str) or not re.match(r"^[a-z0-9_-]{1,32}$", channel):
        raise ProtocolError(code, '"channel" must be a channel name (see GET /v1/channels)')
    targets = parse_targets(obj["targets"], code) if "targets" in obj else None
    partials = obj.get("translate_partials", False)
    if not isinstance(partials, bool):
        raise ProtocolError(code, "translate_partials must be true or false")
    after = obj.get("after")
    if after is not None:
        sid, seq = (after.get("session_id"), after.get("seq")) if isinstance(after, dict) else (None, None)
        if not isinstance(sid, str) or not 0 < len(sid) <= 128 or isinstance(seq, bool) or not isinstance(seq, int) \
                or not 0 <= seq < 2**63:
            raise ProtocolError(code, '"after" must be the last final seen: {"session_id": "...", "seq": 12}')
        after = (sid, seq)
    return Subscribe(channel, targets, partials, after)


def parse_configure(obj: dict[str, Any]) -> Configure:
    code = ErrorCode.INVALID_CONFIGURE
    unknown = set(obj) - {"type", "targets", "language", "translate_partials", "endpoint_ms", "max_utterance_s",
                          "vocabulary", "diarize", "max_speakers"}
    if unknown:
        raise ProtocolError(code, "configure takes targets, language, translate_partials, endpoint_ms, "
                            f"max_utterance_s, vocabulary, diarize, max_speakers; not {sorted(unknown)}")
    targets = parse_targets(obj["targets"], code) if "targets" in obj else None
    language = parse_language(obj["language"], code) if "language" in obj else None
    partials = obj.get("translate_partials")
    if partials is not None and not isinstance(partials, bool):
        raise ProtocolError(code, "translate_partials must be true or false")
    endpoint_ms, max_s = parse_endpointing(obj, code)
    vocabulary = parse_vocabulary(obj["vocabulary"], code) if "vocabulary" in obj else None
    diarize = max_speakers = None
    if "diarize" in obj or "max_speakers" in obj:  # max_speakers alone: checked against the session's diarize
        diarize, max_speakers = check_diarization(obj.get("diarize", True), obj.get("max_speakers"), code)
        diarize = obj.get("diarize")
    return Configure(targets, language, partials, endpoint_ms, max_s, vocabulary, diarize,
                     max_speakers if "max_speakers" in obj else None)


def render_result(r: ClientResult, now: float | None = None, targets: tuple[str, ...] = (),
                  multichannel: bool = False) -> dict[str, Any]:
    """`targets`: what this listener asked for; other listeners' languages are not sent to it. `multichannel`:
    the result and each of its words say their audio channel."""
    if r.kind is ResultKind.END:
        return {"type": "done", "session_id": r.session_id}
    latency = ((now or time.time()) - r.speech_end_wall) * 1000 if r.speech_end_wall else None
    out: dict[str, Any] = {
        "type": r.kind.value,
        "session_id": r.session_id,
        "utterance_id": r.utterance_id,
        "seq": r.seq,
        "text": r.text,
        "stable_text": r.stable_text,
        "language": r.language,
        "start": r.start,
        "end": r.end,
        "words": [_word(w, r.speaker != "" or r.speakers_late, r.channel if multichannel else None) for w in r.words],
        "latency_ms": round(latency, 1) if latency is not None else None,
        "speech_start": r.speech_start,
    }
    if r.kind is ResultKind.FINAL:
        out["endpoint"] = r.endpoint.value
    if multichannel:
        out["channel"] = r.channel
    if r.speaker or r.speakers_late:  # diarized finals (and SPEAKERS corrections): who said it
        out["speaker"] = r.speaker or None
        if r.speakers_late:
            out["speakers_late"] = True
    if targets and (r.kind is ResultKind.FINAL or r.translations or r.translation_errors):
        out["translations"] = {t: r.translations[t] for t in targets if t in r.translations}
        errors = {t: r.translation_errors[t] for t in targets if t in r.translation_errors}
        if errors:
            out["translation_errors"] = errors
        engines = {t: r.translation_engines[t] for t in targets if t in r.translation_engines}
        if engines:
            out["translation_engines"] = engines
        pivots = {t: r.translation_pivots[t] for t in targets if t in r.translation_pivots}
        if pivots:
            out["translation_pivots"] = pivots
    return out


def _word(w: Word, diarized: bool, channel: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
    if channel is not None:
        out["channel"] = channel
    if diarized:
        out["speaker"] = w.speaker or None
        out["speaker_confidence"] = w.speaker_confidence
    return out
