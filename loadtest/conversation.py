"""Multi-speaker conversations made from the speech corpus, and how well a session's speaker labels match them.

Each speaker is one clip's voice (clips chosen from different recordings, so different people); turns are cut
from their clips at the quietest 20 ms near the wanted length (never mid-word where a pause is near) and joined
with short pauses. The reference is who spoke when; a hypothesis label is mapped to the reference speaker its
words overlap most, and a word is right when its label maps to the speaker whose turn holds its midpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadtest.speech import Clip, clips

RATE = 16000

# One clip per person: different recordings (and readers) only. Longest first, so long-turn conversations do not
# run out of a speaker's audio.
VOICES = (
    "en_gb0_bush_radio_address_2008-11-01.wav",
    "en_spontaneous_cold_corpus3.wav",
    "en_librispeech_2412-153948-0000.wav",
    "en_jfk_inaugural_1961.wav",
    "en_fleurs_002_id1950.wav",
    "en_ljspeech_LJ050-0131.wav",
)


@dataclass(frozen=True)
class Turn:
    speaker: str
    start: float
    end: float


@dataclass(frozen=True)
class Conversation:
    pcm: bytes  # int16 mono 16 kHz
    turns: tuple[Turn, ...]
    speakers: tuple[str, ...]

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / RATE


def _quiet_cut(x: np.ndarray, at: int, search: int) -> int:
    """The start of the quietest 20 ms frame within `search` samples of `at`."""
    lo, hi = max(0, at - search), min(len(x), at + search)
    frame = 320
    if hi - lo < frame:
        return min(at, len(x))
    energies = [float(np.mean(x[i:i + frame].astype(np.float64) ** 2)) for i in range(lo, hi - frame, frame // 2)]
    return lo + int(np.argmin(energies)) * (frame // 2) + frame // 2


def build(n_speakers: int, turn_s: tuple[float, float], seconds: float, seed: int = 0,
          gap_s: tuple[float, float] = (0.25, 0.7), names: tuple[str, ...] = VOICES, wrap: bool = True) -> Conversation:
    """About `seconds` of `n_speakers` (the first of `names`) taking turns of `turn_s` seconds (uniform), never one
    speaker twice in a row, each speaker's audio consumed in order (wrapping round when a clip runs out; without
    `wrap`, the conversation ends there instead: a speaker saying the same sentence again is no conversation, and
    STT, which reads each final after the same speaker's last, takes the repeat for a loop and blanks it)."""
    rng = random.Random(seed)
    by_name = {c.name: c for c in clips("en")}
    voices: list[Clip] = [by_name[n] for n in names[:n_speakers]]
    audio = {c.name: np.frombuffer(c.pcm16()[0], "<i2") for c in voices}
    pos = dict.fromkeys(audio, 0)
    out: list[np.ndarray] = []
    turns: list[Turn] = []
    t = 0.0
    prev = ""
    while t < seconds:
        name = rng.choice([c.name for c in voices if c.name != prev] or [voices[0].name])
        prev = name
        x = audio[name]
        want = int(rng.uniform(*turn_s) * RATE)
        if pos[name] + want + RATE // 2 > len(x):
            if not wrap:
                if len(x) - pos[name] < RATE:
                    break
                want = len(x) - pos[name]
            else:
                pos[name] = 0
        a = pos[name]
        b = _quiet_cut(x, min(a + want, len(x)), int(0.3 * RATE))
        if b - a < int(0.5 * RATE):
            b = min(len(x), a + want)
        pos[name] = b
        piece = x[a:b]
        out.append(piece)
        label = f"R{[c.name for c in voices].index(name) + 1}"
        turns.append(Turn(label, t, t + len(piece) / RATE))
        t += len(piece) / RATE
        gap = int(rng.uniform(*gap_s) * RATE)
        out.append(np.zeros(gap, "<i2"))
        t += gap / RATE
    pcm = np.concatenate(out).astype("<i2").tobytes()
    return Conversation(pcm, tuple(turns), tuple(sorted({tr.speaker for tr in turns})))


def interleave(*tracks: bytes) -> bytes:
    """int16 mono tracks -> one stream of them interleaved (track i is channel i), each padded with silence to the
    longest: what a multichannel recorder writes."""
    arrays = [np.frombuffer(t, "<i2") for t in tracks]
    out = np.zeros((max(len(a) for a in arrays), len(arrays)), "<i2")
    for i, a in enumerate(arrays):
        out[:len(a), i] = a
    return out.tobytes()


def call_tracks(conv: Conversation) -> list[bytes]:
    """`conv` as a call recording: one track per speaker (in `conv.speakers` order) holding their turns, silent
    while the others talk."""
    x = np.frombuffer(conv.pcm, "<i2")
    tracks = [np.zeros_like(x) for _ in conv.speakers]
    for t in conv.turns:
        a, b = int(t.start * RATE), int(t.end * RATE)
        tracks[conv.speakers.index(t.speaker)][a:b] = x[a:b]
    return [t.tobytes() for t in tracks]


def reference_at(conv: Conversation, start: float, end: float) -> str | None:
    """The reference speaker whose turn overlaps [start, end] most (None: in a pause)."""
    best, who = 0.0, None
    for tr in conv.turns:
        overlap = min(end, tr.end) - max(start, tr.start)
        if overlap > best:
            best, who = overlap, tr.speaker
    return who


@dataclass
class Score:
    words: int
    right: int
    hyp_speakers: int
    ref_speakers: int
    unlabelled: int
    mapping: dict[str, str]

    @property
    def accuracy(self) -> float:
        return self.right / self.words if self.words else 0.0


def score(conv: Conversation, words: list[dict[str, Any]]) -> Score:
    """`words`: the session's final words (`start`, `end`, `speaker`), stream seconds."""
    pairs = [(w.get("speaker") or "", reference_at(conv, w["start"], w["end"])) for w in words]
    pairs = [(h, r) for h, r in pairs if r is not None]
    votes: dict[str, dict[str, int]] = {}
    for h, r in pairs:
        if h:
            votes.setdefault(h, {}).setdefault(r, 0)
            votes[h][r] += 1
    mapping = {h: max(v, key=lambda k: v[k]) for h, v in votes.items()}
    right = sum(1 for h, r in pairs if h and mapping.get(h) == r)
    return Score(len(pairs), right, len(mapping), len(conv.speakers), sum(1 for h, _ in pairs if not h), mapping)


def final_words(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A native session's final words as a client that applies corrections holds them: a `speakers` result
    replaces its utterance's words."""
    by_utt: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        if r["type"] in ("final", "speakers"):
            by_utt[r["utterance_id"]] = r["words"]
    return [w for utt in sorted(by_utt) for w in by_utt[utt]]
