"""The narrow interface between the STT actor and its engines: requests, results and word timings.

Shared by the engine (`actors.stt.engine`), its coverage check (`actors.stt.coverage`) and the actor's finals
bookkeeping (`actors.stt.finals`), so none of them imports another for its types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float
    end: float
    probability: float


LANGUAGES_WITHOUT_SPACES = frozenset({"ja", "zh", "th", "lo", "my", "yue"})


@dataclass(frozen=True)
class LeftContext:
    """The audio just before a request (the end of the session's previous final) and its words.

    Decoded ahead of the request's audio with its text forced as the decoder's prefix, the request is read as
    the continuation of what came before, as offline Whisper reads speech across a pause in one window: a
    short utterance or a sentence split at a pause otherwise loses its first words to a guess.
    """

    # 16 kHz, starts at a word boundary: float32 to decode; LeftContexts keeps int16 (tail() only slices)
    audio: np.ndarray
    words: tuple[WordTiming, ...]  # seconds into `audio`
    language: str
    gap_s: float = 0.0  # silence between this audio's end and the request's first sample

    @property
    def text(self) -> str:
        joiner = "" if self.language in LANGUAGES_WITHOUT_SPACES else " "
        return joiner.join(w.word for w in self.words)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE + self.gap_s

    def tail(self, seconds: float) -> LeftContext | None:
        """At most the last `seconds`, cut between two words (None: not even one word fits)."""
        if self.seconds <= seconds:
            return self
        dur = len(self.audio) / SAMPLE_RATE
        keep_from = dur + self.gap_s - seconds
        first = next((i for i, w in enumerate(self.words) if w.start >= keep_from), None)
        if first is None:
            return None
        cut = (self.words[first - 1].end + self.words[first].start) / 2 if first else self.words[0].start
        cut = min(max(cut, keep_from), self.words[first].start)
        words = tuple(dataclasses.replace(w, start=max(0.0, w.start - cut), end=max(0.0, w.end - cut))
                      for w in self.words[first:])
        return dataclasses.replace(self, audio=self.audio[int(cut * SAMPLE_RATE):], words=words)

    def joined(self, audio: np.ndarray) -> np.ndarray:
        gap = np.zeros(int(self.gap_s * SAMPLE_RATE), dtype=np.float32)
        return np.concatenate([self.audio.astype(np.float32, copy=False), gap, audio])


@dataclass(frozen=True)
class SttRequest:
    audio: np.ndarray  # float32 mono 16 kHz, at most 30 s
    language: str  # ISO code, or "auto"
    word_timestamps: bool = False
    # The session's previous text, as Whisper's <|startofprev|> prompt (offline Whisper conditions on it too):
    # short utterances decoded without context come out garbled.
    prompt: str = ""
    # The previous final's last seconds, read ahead of this audio (finals only; dropped where the window has
    # no room for it or the language differs).
    context: LeftContext | None = None
    # The session's vocabulary (names, jargon) as a glossary ahead of the prompt, as faster-whisper's `hotwords`:
    # Whisper spells a word it has just "read" the way it was written. Partials and finals alike.
    hotwords: str = ""


@dataclass(frozen=True)
class SttResult:
    text: str
    language: str
    no_speech_prob: float
    avg_logprob: float
    words: list[WordTiming] = field(default_factory=list)
    rejected: str | None = None  # guard that blanked the text, for logs and metrics
    language_prob: float = 0.0  # detection probability when the language was detected, else 0
    # Seconds of left context the decode read (0: none offered, no room for it in the window, or redone
    # without it because it read the context again or looped).
    context_s: float = 0.0
    # Whisper's translate task on the same audio (finals whose stream wants it): the speech in English, else "".
    translation: str = ""


class SpeechToText(Protocol):
    """What the STT actor needs of an engine: one blocking call per batch, any mix of sessions."""

    multilingual: bool
    device: str

    def transcribe_batch(self, requests: list[SttRequest], window_s: float = 30.0,
                         beam_size: int | None = None) -> list[SttResult]: ...

    def translate_batch(self, requests: list[SttRequest], window_s: float = 30.0,
                        beam_size: int | None = None) -> list[str]: ...

    def encode_seconds(self, window_s: float) -> float: ...
