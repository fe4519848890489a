"""What makes a final as good as offline Whisper without waiting longer: the session's previous text as
prompt, and decodes made early (during the endpoint silence) kept until their final arrives.

Pure bookkeeping (no NATS, no model), per STT process. Segments of one session may reach different
replicas; a replica that has not seen the previous final decodes without a prompt, as the first one does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

import numpy as np

from actors.stt.interface import SAMPLE_RATE, LeftContext, WordTiming
from schemas import Segment

R = TypeVar("R")


class PromptContext:
    """The last finals' text per session, for Whisper's <|startofprev|> prompt.

    Bounded in text and sessions. A language change starts afresh: another language's text as prompt
    pushes Whisper to translate or to switch back.
    """

    def __init__(self, max_chars: int = 800, max_sessions: int = 10_000) -> None:
        self.max_chars = max_chars
        self.max_sessions = max_sessions
        self._text: OrderedDict[str, tuple[str, str]] = OrderedDict()  # session → (language, text)

    def prompt(self, session_id: str, language: str) -> str:
        entry = self._text.get(session_id)
        return entry[1] if entry is not None and entry[0] == language else ""

    def add(self, session_id: str, language: str, text: str) -> None:
        text = text.strip()
        if not text:
            return
        before = self.prompt(session_id, language)
        joined = f"{before} {text}".strip()[-self.max_chars :]
        self._text[session_id] = (language, joined)
        self._text.move_to_end(session_id)
        while len(self._text) > self.max_sessions:
            self._text.popitem(last=False)

    def reset(self, session_id: str) -> None:
        self._text.pop(session_id, None)


class LeftContexts:
    """The end of each session's last final (audio and word timings), read ahead of its next final.

    Bounded: `seconds` of audio per session (int16) for the `max_sessions` most recent. A next final that
    starts more than `max_gap_s` after it, or in another language, gets none: the context would not be the
    speech just before it.
    """

    def __init__(self, seconds: float = 2.0, max_gap_s: float = 2.0, max_sessions: int = 512) -> None:
        self.seconds = seconds
        self.max_gap_s = max_gap_s
        self.max_sessions = max_sessions
        # session → (language, int16 audio, words in it, stream seconds where the audio ends)
        self._last: OrderedDict[str, tuple[str, np.ndarray, tuple[WordTiming, ...], float]] = OrderedDict()

    def add(self, session_id: str, language: str, pcm: np.ndarray, words: list[WordTiming],
            start: float) -> None:
        """A final's int16 samples (as the segment carries them, beginning at stream second `start`) and its
        words; only the tail is copied."""
        end = start + len(pcm) / SAMPLE_RATE
        tail = LeftContext(pcm, tuple(words), language).tail(self.seconds) if words and self.seconds > 0 else None
        if tail is None:
            self._last.pop(session_id, None)
            return
        self._last[session_id] = (language, tail.audio.copy(), tail.words, end)
        self._last.move_to_end(session_id)
        while len(self._last) > self.max_sessions:
            self._last.popitem(last=False)

    def has(self, session_id: str, language: str, start: float) -> bool:
        """A context exists for a final of this session starting at stream second `start` (no copy made)."""
        entry = self._last.get(session_id)
        return entry is not None and entry[0] == language and -0.05 <= start - entry[3] <= self.max_gap_s

    def left(self, session_id: str, language: str, start: float) -> LeftContext | None:
        """The context for a final of this session whose audio starts at stream second `start`."""
        if not self.has(session_id, language, start):
            return None
        _, pcm, words, end = self._last[session_id]
        return LeftContext(pcm.astype(np.float32) / 32768.0, words, language, max(0.0, start - end))


def early_key(seg: Segment, language: str) -> tuple[str, int, int, str]:
    """A speculative segment and the final made of the same samples share this key."""
    return seg.session_id, seg.utterance_id, len(seg.audio), language


class EarlyDecodes(Generic[R]):
    """Decodes of speculative segments, waiting for the final with the same samples (bounded, oldest out)."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._results: OrderedDict[tuple[str, int, int, str], R] = OrderedDict()
        self.hits = 0
        self.made = 0

    def put(self, key: tuple[str, int, int, str], result: R) -> None:
        self._results[key] = result
        self._results.move_to_end(key)
        self.made += 1
        while len(self._results) > self.capacity:
            self._results.popitem(last=False)

    def take(self, key: tuple[str, int, int, str]) -> R | None:
        result = self._results.pop(key, None)
        if result is not None:
            self.hits += 1
        return result

    def __contains__(self, key: object) -> bool:
        return key in self._results

    def drop_utterance(self, session_id: str, utterance_id: int) -> None:
        """Its final is out: decodes of shorter or longer versions of it will never be used."""
        for key in [k for k in self._results if k[0] == session_id and k[1] == utterance_id]:
            del self._results[key]
