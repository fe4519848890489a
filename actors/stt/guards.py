"""Hallucination guards: Whisper invents text on silence and loops on noise; catch both."""

from __future__ import annotations

import zlib
from collections.abc import Sequence


def compression_ratio(text: str) -> float:
    raw = text.encode()
    return len(raw) / max(1, len(zlib.compress(raw)))


def _norm(word: str) -> str:
    """A word as the repeat guards compare it: case and surrounding punctuation aside."""
    return word.strip(".,;:!?¿¡\"'«»()-").lower()


def repeated_head(words: Sequence[str], before: str, min_run: int = 4, lookback: int = 40) -> int:
    """How many leading words of a final repeat, in order, a run of at least `min_run` of the session's last
    `lookback` words already published: Whisper copying its prompt, or reading a left context again, starts a
    final with a phrase the previous one ended with ("Good morning. This Tuesday is election day. Good morning.
    This Tuesday is election day. After months..."). 0 when it does not."""
    prev = [_norm(w) for w in before.split()][-lookback:]
    head = [_norm(w) for w in words]
    for k in range(min(len(head), len(prev)), min_run - 1, -1):
        if any(prev[i:i + k] == head[:k] for i in range(len(prev) - k + 1)):
            return k
    return 0


def repeated_edge(words: Sequence[str], ends: Sequence[float], before: str, onset: float, max_k: int = 3) -> int:
    """How many leading words of a final say again, in order, the last words of the session's previous final
    while they also end before this final's speech onset (`onset`: seconds into its audio, timing error included),
    in the pre-roll or the left context the previous final already read: a word cut in two at the boundary comes
    out of both finals ("… a lot different than me." then "me uh acoustic corpus"). A repeat said after the onset
    is the speaker's and stays; a longer one is `repeated_head`'s. 0 when there is none."""
    prev = [w for w in (_norm(x) for x in before.split()) if w][-max_k:]
    head = [_norm(w) for w in words]
    for k in range(min(max_k, len(head), len(prev)), 0, -1):
        if head[:k] == prev[-k:] and all(e <= onset for e in ends[:k]):
            return k
    return 0


def looped(words: Sequence[str], speech_s: float, min_run: int = 4, max_rate: float = 5.0) -> tuple[int, int] | None:
    """The words (start, end) of a final that loop: a phrase of at least `min_run` words said again at once, and
    whatever follows that goes on repeating it, in a final with more words than its speech could hold (over
    `max_rate` a second of the VAD's speech span, pauses included: fast speakers stay under 5). Whisper caught in a
    loop on a short utterance in a long window writes "Good morning. This Tuesday is election day. Good morning. This
    Tuesday is election day. Good" for 2.3 s of audio; a speaker who repeats herself is not also impossibly fast.
    None when there is no such loop."""
    if speech_s <= 0 or len(words) <= max_rate * speech_s:
        return None
    norm = [_norm(w) for w in words]
    for i in range(len(norm)):
        for n in range(min_run, (len(norm) - i) // 2 + 1):
            if norm[i:i + n] == norm[i + n:i + 2 * n]:
                end = i + n
                while end < len(norm) and norm[end] == norm[i + (end - i) % n]:
                    end += 1
                return i + n, end
    return None


def collapse_repeats(text: str, max_repeats: int = 2, max_n: int = 6) -> str:
    """Cut a run of the same word n-gram repeated more than `max_repeats` times down to it once."""
    words = text.split()
    changed = True
    while changed:
        changed = False
        for n in range(1, max_n + 1):
            i = 0
            while i + n * (max_repeats + 1) <= len(words):
                gram = [w.lower().strip(".,!?") for w in words[i : i + n]]
                j = i + n
                count = 1
                while j + n <= len(words) and [w.lower().strip(".,!?") for w in words[j : j + n]] == gram:
                    count += 1
                    j += n
                if count > max_repeats:
                    words = words[: i + n] + words[j:]
                    changed = True
                i += 1
    return " ".join(words)


def reject_reason(
    text: str,
    no_speech_prob: float,
    avg_logprob: float,
    no_speech_threshold: float,
    logprob_threshold: float,
    compression_threshold: float,
) -> str | None:
    if not text.strip():
        return "empty"
    if no_speech_prob > no_speech_threshold and avg_logprob < logprob_threshold:
        return "no_speech"
    if compression_ratio(text) > compression_threshold:
        return "repetition"
    # No guard on low confidence alone: offline Whisper keeps such text, and blanking it lost real (short,
    # accented, or noisy) speech; silence is caught by the VAD and the no-speech rule above.
    return None
