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

from schemas import ClientResult, ResultKind, SpeakerTurns, with_speakers


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
            fixed = with_speakers(sent, t)
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
                    r = with_speakers(r, t)
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
