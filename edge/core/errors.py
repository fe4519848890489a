"""What can go wrong, in one vocabulary for every API: error codes, the WebSocket close code each one takes,
and `ApiError` for HTTP requests. Transports render these in their own wire shapes; nothing here knows one."""

from __future__ import annotations

import enum
from typing import Any


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
    UNSUPPORTED_CHANNELS = "unsupported_channels"  # `channels` not an integer 1-8, or it cannot go with the rest
    INVALID_SESSION_ID = "invalid_session_id"
    INVALID_TARGETS = "invalid_targets"
    INVALID_VOCABULARY = "invalid_vocabulary"  # too many or too long terms, or not a list of strings
    INVALID_DIARIZATION = "invalid_diarization"  # `diarize` not a boolean, `max_speakers` out of range
    UNSUPPORTED_PAIR = "unsupported_pair"  # a target no translator serves (from the session's language)
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
    ErrorCode.UNSUPPORTED_CHANNELS: Close.UNSUPPORTED_DATA,
    ErrorCode.INVALID_SESSION_ID: Close.POLICY,
    ErrorCode.INVALID_TARGETS: Close.POLICY,
    ErrorCode.INVALID_VOCABULARY: Close.POLICY,
    ErrorCode.INVALID_DIARIZATION: Close.POLICY,
    ErrorCode.UNSUPPORTED_PAIR: Close.UNSUPPORTED_DATA,  # at start; at configure it is reported (keep_open)
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
    """`keep_open`: reported, and the session goes on, whatever the code does elsewhere (a `configure` refused
    for a reason that refuses a `start`, say)."""

    def __init__(self, code: ErrorCode, message: str, keep_open: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.keep_open = keep_open

    @property
    def close(self) -> Close | None:
        return None if self.keep_open else CLOSE_FOR[self.code]

    def to_json(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code.value, "message": self.message}


class ApiError(Exception):
    """An HTTP request refused or failed: `status`, a stable `code`, and the form field it concerns (`param`).
    Rendered once, by the error middleware (edge/http/errors.py), in the shape of the API the request used."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
