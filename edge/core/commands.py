"""What a client asks of a live session, whatever API it speaks: the commands and their shared validation."""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Any

from edge.audio.pcm import MAX_CHANNELS
from edge.core.errors import ErrorCode, ProtocolError
from schemas import ENDPOINT_MS_RANGE, MAX_SPEAKERS_RANGE, MAX_UTTERANCE_S_RANGE, NO_ENDPOINT, Encoding
from schemas.languages import WHISPER_LANGUAGES

MAX_TARGETS = 16
MAX_VOCABULARY = 100  # terms per session: Whisper's prompt holds about 112 tokens of them
MAX_TERM_CHARS = 64
_TARGET = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")


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
    # edge (edge/audio/decoders.py) into `encoding` at `sample_rate`, which is what the pipeline receives. "": raw PCM.
    codec: str = ""
    # Per-session endpointing, set by any API that has it (`check_endpointing`): the silence that ends an
    # utterance (0: the server's; NO_ENDPOINT: none, only the cap, a flush or stop) and the longest utterance.
    endpoint_ms: int = 0
    max_utterance_s: float = 0.0
    # Names and terms to spell as given (native `vocabulary`, Deepgram `keyterm`, Speechmatics `additional_vocab`):
    # a glossary in Whisper's prompt, and the text's near-misses corrected (actors/stt/vocabulary.py).
    vocabulary: tuple[str, ...] = ()
    prompt: str = ""  # Whisper's initial prompt for the first finals (OpenAI `prompt`), before the session has text
    # Speaker labels (native `diarize`, Deepgram `diarize`, Speechmatics `diarization: speaker`; check_diarization):
    # `max_speakers` 0 = the diarizer's default.
    diarize: bool = False
    max_speakers: int = 0
    # Multichannel (native `channels`, Deepgram `multichannel=true&channels=N`, Speechmatics channel diarization):
    # N > 1 runs one pipeline per channel and tags every result with its channel (check_channels). Raw audio then
    # comes interleaved, N samples per frame; 1 mixes whatever the client sends down to one channel.
    channels: int = 1

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
    endpoint_ms: int | None = None  # as Start's (checked by check_endpointing); from the next utterance
    max_utterance_s: float | None = None
    vocabulary: tuple[str, ...] | None = None  # from the next utterance
    diarize: bool | None = None  # speaker labels on / off, from the next utterance
    max_speakers: int | None = None  # 0: the server's


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
class Flush:
    """End the open utterance now; its final comes next (a voice agent knows the user's turn is over)."""


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


def parse_vocabulary(terms: Any, code: ErrorCode) -> tuple[str, ...]:
    """A session's vocabulary: at most MAX_VOCABULARY terms of at most MAX_TERM_CHARS each, de-duplicated in
    order; every API's terms come through here, so the bounds are the same everywhere."""
    if isinstance(terms, str):
        terms = [terms]
    if not isinstance(terms, list | tuple) or not all(isinstance(t, str) for t in terms):
        raise ProtocolError(code, '"vocabulary" must be a list of words or names, e.g. ["Tolk", "Ana Lúcia"]')
    cleaned = [" ".join(t.split()) for t in terms]
    if any(not t for t in cleaned):
        raise ProtocolError(code, "vocabulary terms must not be empty")
    long = [t for t in cleaned if len(t) > MAX_TERM_CHARS]
    if long:
        raise ProtocolError(code, f"vocabulary terms are at most {MAX_TERM_CHARS} characters: {long[0][:80]!r}")
    out = tuple(dict.fromkeys(cleaned))
    if len(out) > MAX_VOCABULARY:
        raise ProtocolError(code, f"at most {MAX_VOCABULARY} vocabulary terms per session, not {len(out)}")
    return out


def check_diarization(diarize: Any, max_speakers: Any, code: ErrorCode) -> tuple[bool, int]:
    """`diarize` (a boolean) and `max_speakers` (None: the server's; else an integer in MAX_SPEAKERS_RANGE, and only
    with diarize on): every API's speaker settings come through here, so the bounds are the same everywhere."""
    if not isinstance(diarize, bool):
        raise ProtocolError(code, "diarize must be true or false")
    if max_speakers is None:
        return diarize, 0
    lo, hi = MAX_SPEAKERS_RANGE
    if isinstance(max_speakers, bool) or not isinstance(max_speakers, int) or not lo <= max_speakers <= hi:
        raise ProtocolError(code, f"max_speakers must be an integer {lo}-{hi}")
    if not diarize:
        raise ProtocolError(code, "max_speakers needs diarization on")
    return diarize, max_speakers


def check_channels(channels: Any, code: ErrorCode) -> int:
    """A multichannel session's channel count, 1-MAX_CHANNELS: every API's comes through here."""
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
        raise ProtocolError(code, f"channels must be an integer 1-{MAX_CHANNELS} (the audio's interleaved channels, "
                            "each transcribed on its own)")
    return channels


def check_endpointing(endpoint_ms: int, max_utterance_s: float, code: ErrorCode) -> None:
    """Refuses endpointing outside the documented bounds (schemas.ENDPOINT_MS_RANGE, MAX_UTTERANCE_S_RANGE); 0 is
    the server's default. Transports convert their API's units and report `code` in their own shape."""
    lo, hi = ENDPOINT_MS_RANGE
    if endpoint_ms not in (0, NO_ENDPOINT) and not lo <= endpoint_ms <= hi:
        raise ProtocolError(code, f"endpoint_ms must be {lo}-{hi} (ms of silence that end an utterance)")
    lo_s, hi_s = MAX_UTTERANCE_S_RANGE
    if max_utterance_s and not (math.isfinite(max_utterance_s) and lo_s <= max_utterance_s <= hi_s):
        raise ProtocolError(code, f"max_utterance_s must be {lo_s:g}-{hi_s:g} (seconds)")


def check_audio(data: bytes, encoding: Encoding, max_frame: int, channels: int = 1) -> None:
    """Raw PCM frames hold whole samples: of every channel, for interleaved multichannel audio."""
    if len(data) > max_frame:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"audio frame of {len(data)} bytes exceeds {max_frame}")
    width = encoding.sample_width * channels
    if len(data) % width:
        what = f"{channels} interleaved channels of {encoding.value}" if channels > 1 else encoding.value
        raise ProtocolError(
            ErrorCode.INVALID_FRAME, f"{what} frames must be a multiple of {width} bytes, got {len(data)}"
        )


def decode_base64(data: Any, max_frame: int, what: str = '"data"') -> bytes:
    """Audio sent as base64 in a JSON message (native `audio`, Speechmatics' `AddChannelAudio`): `what` names the
    field in the errors; the size is bounded before decoding."""
    if not isinstance(data, str):
        raise ProtocolError(ErrorCode.INVALID_BASE64, f"{what} must be a base64 string")
    if len(data) > (max_frame * 4) // 3 + 4:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"audio frame larger than {max_frame} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(ErrorCode.INVALID_BASE64, f"malformed base64: {exc}") from exc
    if len(raw) > max_frame:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"audio frame of {len(raw)} bytes exceeds {max_frame}")
    return raw
