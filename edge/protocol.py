"""The client protocol of `GET /v1/listen`, as pure functions: parse, validate, render.

Kept free of aiohttp and NATS so every rule (and every error code) is unit-testable.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from actors.runtime.partition import valid_session_id
from edge.audio_in import COMPRESSED, RATE
from schemas import ClientResult, Encoding, ResultKind
from schemas.languages import WHISPER_LANGUAGES

MIN_RATE, MAX_RATE = 8000, 48000
MAX_TARGETS = 16
_TARGET = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")


class Close(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    TRY_AGAIN = 1013


class ErrorCode(enum.StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_START = "invalid_start"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    UNSUPPORTED_SAMPLE_RATE = "unsupported_sample_rate"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    INVALID_SESSION_ID = "invalid_session_id"
    INVALID_TARGETS = "invalid_targets"
    INVALID_CONFIGURE = "invalid_configure"
    INVALID_SUBSCRIBE = "invalid_subscribe"
    UNKNOWN_CHANNEL = "unknown_channel"
    NOT_STREAMING = "not_streaming"
    SLOW_CONSUMER = "slow_consumer"
    SESSION_IN_USE = "session_in_use"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_RESUMED = "session_resumed"
    OVERLOADED = "overloaded"
    TOO_MANY_SESSIONS = "too_many_sessions"
    SESSION_TOO_LONG = "session_too_long"
    AUDIO_BEFORE_START = "audio_before_start"
    INVALID_FRAME = "invalid_frame"
    INVALID_AUDIO = "invalid_audio"
    FRAME_TOO_LARGE = "frame_too_large"
    INVALID_BASE64 = "invalid_base64"
    IDLE_TIMEOUT = "idle_timeout"
    UNKNOWN_TYPE = "unknown_type"
    DRAIN_TIMEOUT = "drain_timeout"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal_error"


CLOSE_FOR: dict[ErrorCode, Close | None] = {
    ErrorCode.INVALID_JSON: Close.INVALID_PAYLOAD,
    ErrorCode.INVALID_START: Close.POLICY,
    ErrorCode.UNSUPPORTED_ENCODING: Close.UNSUPPORTED_DATA,
    ErrorCode.UNSUPPORTED_SAMPLE_RATE: Close.UNSUPPORTED_DATA,
    ErrorCode.UNSUPPORTED_LANGUAGE: Close.UNSUPPORTED_DATA,
    ErrorCode.INVALID_SESSION_ID: Close.POLICY,
    ErrorCode.INVALID_TARGETS: Close.POLICY,
    ErrorCode.INVALID_CONFIGURE: None,  # reported; the session goes on with its previous settings
    ErrorCode.INVALID_SUBSCRIBE: None,  # reported; a listener keeps its channel (if any)
    ErrorCode.UNKNOWN_CHANNEL: None,
    ErrorCode.NOT_STREAMING: None,  # audio from a listener: ignored
    ErrorCode.SLOW_CONSUMER: Close.POLICY,
    ErrorCode.SESSION_IN_USE: Close.POLICY,
    ErrorCode.UNKNOWN_SESSION: Close.POLICY,
    ErrorCode.SESSION_RESUMED: Close.POLICY,  # this connection's session was resumed on a newer one
    ErrorCode.TOO_MANY_SESSIONS: Close.POLICY,
    ErrorCode.SESSION_TOO_LONG: None,  # reported at the limit; the session is flushed, then closed with 1008
    ErrorCode.OVERLOADED: Close.TRY_AGAIN,  # shed at start, so the sessions already running keep their latency
    ErrorCode.AUDIO_BEFORE_START: Close.POLICY,
    ErrorCode.INVALID_FRAME: Close.INVALID_PAYLOAD,
    ErrorCode.INVALID_AUDIO: Close.INVALID_PAYLOAD,  # compressed audio that does not decode as it said
    ErrorCode.FRAME_TOO_LARGE: Close.TOO_BIG,
    ErrorCode.INVALID_BASE64: Close.INVALID_PAYLOAD,
    ErrorCode.IDLE_TIMEOUT: Close.POLICY,
    ErrorCode.UNKNOWN_TYPE: None,  # reported, session continues (forward compatibility)
    ErrorCode.DRAIN_TIMEOUT: Close.INTERNAL,
    ErrorCode.SHUTTING_DOWN: Close.GOING_AWAY,
    ErrorCode.INTERNAL: Close.INTERNAL,
}


class ProtocolError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close(self) -> Close | None:
        return CLOSE_FOR[self.code]

    def to_json(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code.value, "message": self.message}


@dataclass(frozen=True)
class Start:
    sample_rate: int
    encoding: Encoding
    language: str
    session_id: str | None
    targets: tuple[str, ...] = ()
    translate_partials: bool = False
    resume_from: int | None = None  # resume `session_id`: the last `seq` this client saw (0: none)
    resume_token: str = ""  # the `resume_token` the session's `started` carried
    # Compressed audio (`ogg_opus`, `webm_opus`, `opus`; vendor adapters also `mulaw`, `file`): decoded at the
    # edge (edge/audio_in.py) into `encoding` at `sample_rate`, which is what the pipeline receives. "": raw PCM.
    codec: str = ""

    @property
    def wire_encoding(self) -> str:
        """The encoding the client sends (what `started` echoes)."""
        return self.codec or self.encoding.value


@dataclass(frozen=True)
class Configure:
    """Mid-session change; a field left out keeps its current value."""

    targets: tuple[str, ...] | None
    language: str | None
    translate_partials: bool | None


@dataclass(frozen=True)
class Subscribe:
    """Listen to a broadcast channel (switches channel when already listening)."""

    channel: str
    targets: tuple[str, ...] | None
    translate_partials: bool
    after: tuple[str, int] | None = None  # a reconnecting listener's last final (session_id, seq): replay after it


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Audio:
    data: bytes


@dataclass(frozen=True)
class Unknown:
    type: str


ClientMessage = Start | Configure | Subscribe | Stop | Audio | Unknown


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
    return Start(rate, encoding, language, sid, targets, partials, resume, token if resume is not None else "",
                 codec)


def parse_language(language: Any, code: ErrorCode) -> str:
    if not isinstance(language, str) or (language != "auto" and language not in WHISPER_LANGUAGES):
        raise ProtocolError(code, f"language {language!r}: use an ISO 639-1 code or 'auto'")
    return language


def parse_targets(targets: Any, code: ErrorCode) -> tuple[str, ...]:
    """Target languages: ISO 639 codes, optionally with a region (`pt-BR`), de-duplicated in order."""
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ProtocolError(code, '"targets" must be a list of language codes, e.g. ["de", "pt"]')
    bad = [t for t in targets if not _TARGET.match(t)]
    if bad:
        raise ProtocolError(code, f"not language codes: {', '.join(map(repr, bad[:5]))}")
    out = tuple(dict.fromkeys(targets))
    if len(out) > MAX_TARGETS:
        raise ProtocolError(code, f"at most {MAX_TARGETS} target languages per session")
    return out


def parse_subscribe(obj: dict[str, Any]) -> Subscribe:
    code = ErrorCode.INVALID_SUBSCRIBE
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
    unknown = set(obj) - {"type", "targets", "language", "translate_partials"}
    if unknown:
        raise ProtocolError(code, f"configure takes targets, language, translate_partials; not {sorted(unknown)}")
    targets = parse_targets(obj["targets"], code) if "targets" in obj else None
    language = parse_language(obj["language"], code) if "language" in obj else None
    partials = obj.get("translate_partials")
    if partials is not None and not isinstance(partials, bool):
        raise ProtocolError(code, "translate_partials must be true or false")
    return Configure(targets, language, partials)


def decode_base64(data: Any, max_frame: int) -> bytes:
    if not isinstance(data, str):
        raise ProtocolError(ErrorCode.INVALID_BASE64, '"data" must be a base64 string')
    if len(data) > (max_frame * 4) // 3 + 4:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"audio frame larger than {max_frame} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(ErrorCode.INVALID_BASE64, f"malformed base64: {exc}") from exc
    if len(raw) > max_frame:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"audio frame of {len(raw)} bytes exceeds {max_frame}")
    return raw


def check_audio(data: bytes, encoding: Encoding, max_frame: int) -> None:
    if len(data) > max_frame:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"audio frame of {len(data)} bytes exceeds {max_frame}")
    width = encoding.sample_width
    if len(data) % width:
        raise ProtocolError(
            ErrorCode.INVALID_FRAME, f"{encoding.value} frames must be a multiple of {width} bytes, got {len(data)}"
        )


def render_result(r: ClientResult, now: float | None = None, targets: tuple[str, ...] = ()) -> dict[str, Any]:
    """`targets`: what this listener asked for; other listeners' languages are not sent to it."""
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
        "words": [{"word": w.word, "start": w.start, "end": w.end, "probability": w.probability} for w in r.words],
        "latency_ms": round(latency, 1) if latency is not None else None,
        "speech_start": r.speech_start,
    }
    if r.kind is ResultKind.FINAL:
        out["endpoint"] = r.endpoint.value
    if targets and (r.kind is ResultKind.FINAL or r.translations or r.translation_errors):
        out["translations"] = {t: r.translations[t] for t in targets if t in r.translations}
        errors = {t: r.translation_errors[t] for t in targets if t in r.translation_errors}
        if errors:
            out["translation_errors"] = errors
    return out
