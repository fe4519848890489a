"""What the server sends, as typed objects (the JSON of docs/protocol.md#results, mirroring `schemas.ClientResult`).

Parsing is lenient about fields it does not know (a newer server may add some) and strict about the ones it
does, so a client never silently treats a malformed message as text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Kind(enum.StrEnum):
    """What a result is: a partial (replaced by the next one of its utterance) or a final."""

    PARTIAL = "partial"
    FINAL = "final"
    SPEAKERS = "speakers"  # a final's speaker labels corrected (same utterance_id and seq): replace its labels


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    probability: float = 0.0
    speaker: str = ""  # diarized sessions: "S1", "S2"...


@dataclass(frozen=True)
class Result:
    kind: Kind
    session_id: str
    utterance_id: int
    seq: int
    text: str
    stable_text: str = ""
    language: str = ""
    start: float = 0.0
    end: float = 0.0
    speech_start: float = 0.0
    words: tuple[Word, ...] = ()
    translations: dict[str, str] = field(default_factory=dict)
    translation_errors: dict[str, str] = field(default_factory=dict)
    endpoint: str = ""
    latency_ms: float = 0.0
    replay: bool = False  # a channel's history, sent on subscribe
    channel: str = ""  # a broadcast channel's results: its name
    speaker: str = ""  # diarized sessions: who said (most of) it; "" until known (`speakers_late`)
    speakers_late: bool = False
    audio_channel: int = 0  # a multichannel session's results: the audio channel (0-based) it is of

    @property
    def is_final(self) -> bool:
        return self.kind is Kind.FINAL

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Result:
        channel = d.get("channel")  # a broadcast channel's name, or a multichannel session's audio channel
        return cls(
            kind=Kind(d["type"]), session_id=str(d["session_id"]), utterance_id=int(d["utterance_id"]),
            seq=int(d["seq"]), text=str(d.get("text", "")), stable_text=str(d.get("stable_text", "")),
            language=str(d.get("language") or ""), start=float(d.get("start", 0.0)), end=float(d.get("end", 0.0)),
            speech_start=float(d.get("speech_start") or d.get("start", 0.0)),
            words=tuple(Word(str(w["word"]), float(w["start"]), float(w["end"]), float(w.get("probability", 0.0)),
                             str(w.get("speaker") or "")) for w in d.get("words") or ()),
            translations=dict(d.get("translations") or {}),
            translation_errors=dict(d.get("translation_errors") or {}),
            endpoint=str(d.get("endpoint") or ""), latency_ms=float(d.get("latency_ms") or 0.0),
            replay=bool(d.get("replay", False)), channel=channel if isinstance(channel, str) else "",
            speaker=str(d.get("speaker") or ""), speakers_late=bool(d.get("speakers_late", False)),
            audio_channel=channel if isinstance(channel, int) and not isinstance(channel, bool) else 0,
        )


@dataclass(frozen=True)
class AudioFrame:
    """A channel's relayed audio: MP3 at `stream_time` seconds on the channel's clock (captions use it too)."""

    stream_time: float
    mp3: bytes


class TolkError(Exception):
    """An error the server reported (`{"type":"error","code","message"}`) or an HTTP error with its JSON body."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.status = status

    @classmethod
    def from_json(cls, body: dict[str, Any], status: int | None = None) -> TolkError:
        """From the server's `{"code", "message"}` (a WebSocket `error`, an SSE `error`, an HTTP error body)."""
        return cls(str(body.get("code", "error")), str(body.get("message", "")), status)
