"""Voiced audio a final's words do not cover: Whisper sometimes stops a window early (an ending such as
"Thank you for listening." followed by end-of-text, with seconds of speech left) or skips a sentence it takes
for its prompt repeated. Offline Whisper re-reads such audio as its next 30 s window; a streaming final has no
next window, so the STT decodes the uncovered part again (`WhisperEngine.transcribe_batch`).

Pure: word timings and samples in, spans out. A span counts only when it is long and loud enough to be speech
(frames within 10 dB of the covered words' median level), so endpoint silence and breaths never trigger it.
Words squeezed into a moment (a continuation that only re-read its left context's audio comes back timed at
0.0) have no level of their own: the audio's loud frames stand in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from actors.stt.interface import SAMPLE_RATE, SttResult, WordTiming

PER_S = 50  # level frames per second
FRAME = SAMPLE_RATE // PER_S  # 20 ms
# Shorter gaps are the words' timing error, endpoint silence and padding. Not 1 s: a final's last two words
# ("... painful | to myself.", 0.5 s voiced) then the 0.5 s endpoint silence make a 0.9 s tail.
MIN_UNCOVERED_S = 0.6
MIN_VOICED_S = 0.5  # of loud frames in the span
RELATIVE_LEVEL = 0.3  # ≈ -10 dB of the covered speech's median frame level
OVERLAP_S = 0.1  # a re-decoded span starts this much inside the covered words (no clipped onset)
MIN_COVERED_S = 0.5  # words covering less than this give no level to compare with


@dataclass(frozen=True)
class Span:
    side: Literal["head", "tail"]
    start: float  # seconds into the request's audio
    end: float


def frame_levels(audio: np.ndarray) -> np.ndarray:
    """RMS per 20 ms frame (any sample type: callers compare levels with each other, never with a scale)."""
    n = len(audio) // FRAME
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    frames = audio[: n * FRAME].astype(np.float32).reshape(n, FRAME)
    levels: np.ndarray = np.sqrt(np.mean(frames * frames, axis=1))
    return levels


def uncovered(audio: np.ndarray, words: list[WordTiming]) -> list[Span]:
    """The head and tail of `audio` (float32, 16 kHz) outside `words` that hold speech."""
    if not words:
        return []
    levels = frame_levels(audio)
    duration = len(audio) / SAMPLE_RATE
    first, last = words[0].start, words[-1].end
    if levels.size == 0:
        return []
    covered = levels[int(first * PER_S): max(int(first * PER_S) + 1, int(last * PER_S))]
    # Too few covered frames to measure: the audio's loud frames (speech, not noise) stand in.
    reference = np.median(covered) if covered.size >= MIN_COVERED_S * PER_S else np.percentile(levels, 90)
    floor = RELATIVE_LEVEL * float(reference)
    if floor <= 0:
        return []

    def voiced(start: float, end: float) -> bool:
        if end - start < MIN_UNCOVERED_S:
            return False
        loud = int(np.count_nonzero(levels[int(start * PER_S): int(end * PER_S)] >= floor))
        return loud / PER_S >= MIN_VOICED_S

    out = []
    if voiced(0.0, first):
        out.append(Span("head", 0.0, min(duration, first + OVERLAP_S)))
    if voiced(last, duration):
        out.append(Span("tail", max(0.0, last - OVERLAP_S), duration))
    return out


def merge(result: SttResult, span: Span, extra: SttResult) -> SttResult:
    """`result` with the words decoded from `span` added before or after its own; words of `extra` that fall
    within the overlap with `result`'s words are dropped (they were decoded twice)."""
    if not extra.text or not result.words:
        return result
    shifted = [dataclasses.replace(w, start=round(w.start + span.start, 3), end=round(w.end + span.start, 3))
               for w in extra.words]
    head = span.side == "head"
    boundary = result.words[0].start if head else result.words[-1].end
    new = [w for w in shifted if ((w.start + w.end) / 2 < boundary) == head]
    if not new:
        return result
    added = " ".join(w.word for w in new)
    if head:
        return dataclasses.replace(result, text=f"{added} {result.text}".strip(), words=[*new, *result.words])
    return dataclasses.replace(result, text=f"{result.text} {added}".strip(), words=[*result.words, *new])
