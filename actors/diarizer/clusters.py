"""Online speaker clustering for one session: pure logic over embeddings, no NATS, unit-tested on its own.

Each speaker is a running sum of the embeddings of the speech given to them (weighted by its seconds), so the
centroid is the duration-weighted mean voice. A span joins the closest speaker when their cosine similarity is
at least `threshold`; otherwise it starts a new cluster (when the span is long enough for its voice to be
trusted), else it joins the closest. A cluster becomes a speaker with 4 s of speech; labels S1, S2... follow
that order (order of appearance). After each final, clusters that turn out to be one voice merge, a small one
more readily (SessionVoices.settle). A label given to speech can change later (a short cluster turns out to be
a new speaker, or two clusters merge): the actor then republishes that utterance's labels as a correction.

Change points inside an utterance come from adjacent windows: where the voice in the `window` before a point
and the `window` after it are less alike than `threshold`, at a local minimum, at least `min_turn` from the
last cut, the utterance is split and each part is labelled on its own.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from actors.diarizer.interface import SAMPLE_RATE, SpeakerEncoder


@dataclass(frozen=True)
class Span:
    start: float  # seconds into the utterance
    end: float
    cluster: int  # SessionVoices cluster (its public label may change: SessionVoices.label)
    confidence: float  # the span's similarity to its cluster


@dataclass
class SessionVoices:
    """One session's voices. Spans are assigned to clusters; a cluster is a *speaker* (with a public label) once
    it holds `establish_s` of speech. Until then its spans are labelled as the closest speaker: a cough or a
    noisy second of a known voice does not become a speaker of its own, and a new person's first words are
    relabelled (a correction) once they have said enough to be told apart."""

    max_speakers: int
    threshold: float  # under this similarity to every cluster, a long enough span is a new voice
    merge_threshold: float = 0.8  # two clusters whose voices grew this alike are one (the later joins the earlier)
    min_new_s: float = 1.0  # a span shorter than this never starts a cluster (its embedding is too noisy)
    establish_s: float = 4.0
    sums: list[np.ndarray] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    merged: dict[int, int] = field(default_factory=dict)  # cluster → the earlier one it turned out to be
    numbers: dict[int, int] = field(default_factory=dict)  # established cluster → its label number (1: S1)

    def alive(self) -> list[int]:
        return [i for i in range(len(self.sums)) if i not in self.merged]

    def centroid(self, i: int) -> np.ndarray:
        c: np.ndarray = self.sums[i] / max(float(np.linalg.norm(self.sums[i])), 1e-9)
        return c

    def resolve(self, i: int) -> int:
        while i in self.merged:
            i = self.merged[i]
        return i

    def speakers(self) -> int:
        return len(self.numbers)

    def assign(self, emb: np.ndarray, seconds: float) -> tuple[int, float]:
        """The cluster for a span with voice `emb` lasting `seconds`, and its similarity; updates its centroid."""
        alive = self.alive()
        sims = {i: float(emb @ self.centroid(i)) for i in alive}
        best = max(sims, key=lambda i: sims[i]) if sims else -1
        can_add = len(alive) < 2 * self.max_speakers and (seconds >= self.min_new_s or not alive)
        if best < 0 or (sims[best] < self.threshold and can_add):
            self.sums.append(emb * seconds)
            self.weights.append(seconds)
            return len(self.sums) - 1, 1.0
        self.sums[best] = self.sums[best] + emb * seconds
        self.weights[best] += seconds
        return best, max(0.0, sims[best])

    def settle(self) -> None:
        """Merges clusters that turn out to be one voice, then makes speakers of clusters with enough speech
        (numbered in order of appearance).

        Two clusters merge when their voices grew `merge_threshold` alike, or when one of them holds under
        `establish_s` of speech and they are `threshold` alike: the rule `assign` applies to a span, applied again
        with the evidence the session has gathered since (a voice's first words, or the end of one turn glued to
        the start of the next, often started a cluster of their own before the voice's centroid was known). The
        first voice is labelled S1 before it is established, so the first words are not unlabelled; if another
        voice is established while that provisional S1 holds under half `establish_s` (a cough, or the ~1.5 s span a
        change point cuts off the start of a final, mixing the end of one turn with the start of the next), it was
        no voice: S1 passes to the established one and the small cluster is labelled as its closest speaker, like
        any other. A first voice with more speech keeps S1 (it is likely a person who spoke first, briefly)."""
        again = True
        while again:
            again = False
            alive = self.alive()
            for a, b in ((a, b) for a in alive for b in alive if b > a):
                sim = float(self.centroid(a) @ self.centroid(b))
                small = min(self.weights[a], self.weights[b]) < self.establish_s
                if sim >= self.merge_threshold or (small and sim >= self.threshold):
                    self.sums[a] = self.sums[a] + self.sums[b]
                    self.weights[a] += self.weights[b]
                    self.merged[b] = a
                    number = self.numbers.pop(b, None)  # b's label retires (its speech is corrected to a's)...
                    if number is not None and a not in self.numbers:
                        self.numbers[a] = number  # ...unless a had none: then a carries it on
                    again = True
                    break
        grown = [i for i in self.alive() if self.weights[i] >= self.establish_s]
        if len(self.numbers) == 1 and grown:
            (first, number), = self.numbers.items()
            if self.weights[first] < self.establish_s / 2:
                del self.numbers[first]
                self.numbers[grown[0]] = number
        for i in self.alive():
            if i not in self.numbers and len(self.numbers) < self.max_speakers and \
                    (self.weights[i] >= self.establish_s or not self.numbers):
                self.numbers[i] = max(self.numbers.values(), default=0) + 1

    def label(self, cluster: int) -> tuple[str, float]:
        """The public label of a cluster's speech now, and how alike the cluster is to that speaker (1: itself)."""
        i = self.resolve(cluster)
        if i in self.numbers:
            return f"S{self.numbers[i]}", 1.0
        if not self.numbers:
            return "", 0.0
        sims = {j: float(self.centroid(i) @ self.centroid(j)) for j in self.numbers}
        j = max(sims, key=lambda k: sims[k])
        return f"S{self.numbers[j]}", max(0.0, sims[j])


def change_points(encoder: SpeakerEncoder, audio: np.ndarray, window_s: float, step_s: float, threshold: float,
                  min_turn_s: float) -> list[float]:
    """Seconds into `audio` where the voice changes (see the module docstring); [] for audio under 2 windows."""
    if len(audio) < 2 * window_s * SAMPLE_RATE:
        return []
    starts, embs = encoder.embed_windows(audio, window_s, step_s)
    lag = max(1, round(window_s / step_s))  # the window starting where the previous one ends
    points = [(float(starts[i + lag]), float(embs[i] @ embs[i + lag])) for i in range(len(embs) - lag)]
    cuts: list[float] = []
    for j, (at, sim) in enumerate(points):
        if sim >= threshold:
            continue
        lo, hi = max(0, j - lag // 2), min(len(points), j + lag // 2 + 1)
        if sim > min(s for _, s in points[lo:hi]):
            continue  # not the dip's lowest point
        if cuts and at - cuts[-1] < min_turn_s:
            continue
        cuts.append(at)
    return cuts


def label_utterance(voices: SessionVoices, encoder: SpeakerEncoder, audio: np.ndarray, window_s: float,
                    step_s: float, change_threshold: float, min_turn_s: float) -> list[Span]:
    """The utterance split at its change points, each part assigned a cluster; adjacent parts of one cluster
    merged. The caller settles the voices and labels the spans (SessionVoices.settle, .label)."""
    duration = len(audio) / SAMPLE_RATE
    bounds = [0.0, *change_points(encoder, audio, window_s, step_s, change_threshold, min_turn_s), duration]
    spans: list[Span] = []
    for a, b in itertools.pairwise(bounds):
        part = audio[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)]
        cluster, confidence = voices.assign(encoder.embed(part), b - a)
        if spans and spans[-1].cluster == cluster:
            prev = spans.pop()
            spans.append(Span(prev.start, b, cluster, min(prev.confidence, confidence)))
        else:
            spans.append(Span(a, b, cluster, confidence))
    return spans
