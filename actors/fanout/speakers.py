"""Speaker labels merged into a diarized session's results: pure logic, no NATS, unit-tested on its own.

The diarizer labels a final while STT transcribes it, so its `SpeakerTurns` usually arrive first. A final that
wants labels waits for them at most `wait_s`; what comes after it waits behind it (order is kept). Past the wait
it goes out unlabelled with `speakers_late`, and when its labels come they are sent as a SPEAKERS result for the
same utterance. The diarizer may also revise labels already given (a short voice turned out to be a new speaker):
a revision that changes what a client was sent goes out as a SPEAKERS result too, so a client is never shown one
speaker and silently given another.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import msgspec

from schemas import ClientResult, ResultKind, SpeakerSpan, SpeakerTurns, Word


def _speaker_at(spans: tuple[SpeakerSpan, ...], start: float, end: float) -> SpeakerSpan | None:
    """The span overlapping [start, end] most (the nearest one for a word outside every span)."""
    if not spans:
        return None
    overlap = [(min(end, s.end) - max(start, s.start), s) for s in spans]
    best, span = max(overlap, key=lambda o: o[0])
    if best > 0 or (end <= start and spans[0].start <= start <= spans[-1].end):
        return span
    mid = (start + end) / 2
    return min(spans, key=lambda s: min(abs(mid - s.start), abs(mid - s.end)))


def labelled(r: ClientResult, turns: SpeakerTurns) -> ClientResult:
    """`r` with each word's speaker, and the speaker of most of its words' time as the result's."""
    words: list[Word] = []
    talk: dict[str, float] = {}
    for w in r.words:
        span = _speaker_at(turns.spans, w.start, w.end)
        if span is None:
            words.append(w)
            continue
        words.append(msgspec.structs.replace(w, speaker=span.speaker, speaker_confidence=span.confidence))
        talk[span.speaker] = talk.get(span.speaker, 0.0) + max(w.end - w.start, 0.01)
    if not talk:  # no words (or none timed): the utterance's own majority
        for s in turns.spans:
            talk[s.speaker] = talk.get(s.speaker, 0.0) + s.end - s.start
    speaker = max(talk, key=lambda k: talk[k]) if talk else ""
    return msgspec.structs.replace(r, words=tuple(words), speaker=speaker, speakers_late=False)


@dataclass
class _Waiting:
    result: ClientResult
    deadline: float
    wants: bool  # a diarized final: held for its labels
    since: float


@dataclass
class SpeakerGate:
    """One session's results on their way out, in order, with labels merged (see the module docstring)."""

    wait_s: float
    turns: dict[int, SpeakerTurns] = field(default_factory=dict)  # utterance → labels not yet used
    queue: deque[_Waiting] = field(default_factory=deque)
    sent: dict[int, ClientResult] = field(default_factory=dict)  # utterance → diarized final as sent (the newest)
    touched: float = 0.0
    waited: list[float] = field(default_factory=list)  # how long each diarized final was held (drained by fan-out)

    @staticmethod
    def wants(r: ClientResult, diarize: bool) -> bool:
        return diarize and r.kind is ResultKind.FINAL and bool(r.words or r.text)

    def offer(self, r: ClientResult, diarize: bool, now: float) -> list[ClientResult]:
        self.touched = now
        self.queue.append(_Waiting(r, now + self.wait_s, self.wants(r, diarize), now))
        return self.release(now)

    def labels(self, t: SpeakerTurns, now: float) -> list[ClientResult]:
        """Labels arrived: releases what waited for them, or corrects a final sent without them."""
        self.touched = now
        sent = self.sent.get(t.utterance_id)
        if sent is not None:
            fixed = labelled(sent, t)
            if not sent.speakers_late and fixed.words == sent.words and fixed.speaker == sent.speaker:
                return self.release(now)  # a revision that changes nothing this client saw
            self._sent(fixed)
            return [msgspec.structs.replace(fixed, kind=ResultKind.SPEAKERS, stable_text=fixed.text),
                    *self.release(now)]
        held = self.turns.get(t.utterance_id)
        if held is None or held.revision <= t.revision:
            self.turns[t.utterance_id] = t
        return self.release(now)

    def _sent(self, r: ClientResult) -> None:
        self.sent.pop(r.utterance_id, None)
        self.sent[r.utterance_id] = r
        while len(self.sent) > 64:  # revisions reach back 32 utterances (actors/diarizer)
            del self.sent[next(iter(self.sent))]

    def release(self, now: float) -> list[ClientResult]:
        out: list[ClientResult] = []
        while self.queue:
            head = self.queue[0]
            r = head.result
            if head.wants:
                t = self.turns.pop(r.utterance_id, None)
                if t is not None:
                    r = labelled(r, t)
                elif now < head.deadline:
                    break
                else:
                    r = msgspec.structs.replace(r, speakers_late=True)
                self._sent(r)
                self.waited.append(now - head.since)
            self.queue.popleft()
            out.append(r)
        if len(self.turns) > 256:  # labels of finals that never came (blank text): keep the newest
            for key in sorted(self.turns)[:-256]:
                del self.turns[key]
        return out

    def next_deadline(self) -> float | None:
        return self.queue[0].deadline if self.queue and self.queue[0].wants else None
