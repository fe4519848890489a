"""Per-session reorder buffer: pure logic, no NATS, unit-tested on its own.

STT replicas finish out of order; the segmenter numbers everything it emits (`seq`), STT publishes
a result for every seq (stale partials too), so the buffer can release a gap-free run. A gap that
outlives `gap_timeout` is skipped so one lost message cannot stall a session forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas import ClientResult, ResultKind, Transcript


def stable_prefix(previous: str, current: str) -> str:
    """Words two consecutive hypotheses agree on (local agreement): unlikely to change again."""
    a, b = previous.split(), current.split()
    n = 0
    while n < min(len(a), len(b)) and a[n].lower().strip(",.!?") == b[n].lower().strip(",.!?"):
        n += 1
    return " ".join(b[:n])


@dataclass
class SessionOrder:
    session_id: str
    next_seq: int = 1
    pending: dict[int, Transcript] = field(default_factory=dict)
    waiting_since: float | None = None
    last_partial: dict[int, str] = field(default_factory=dict)  # utterance → last partial text
    finalised: set[int] = field(default_factory=set)
    ended: bool = False
    touched: float = 0.0

    def offer(self, t: Transcript, now: float) -> list[ClientResult]:
        self.touched = now
        if t.seq < self.next_seq or self.ended:
            return []  # duplicate (redelivery) or after END
        self.pending[t.seq] = t
        return self._release(now)

    def skip_gap(self, now: float, timeout: float) -> list[ClientResult]:
        if not self.pending or self.waiting_since is None or now - self.waiting_since < timeout:
            return []
        self.next_seq = min(self.pending)
        return self._release(now)

    def _release(self, now: float) -> list[ClientResult]:
        out: list[ClientResult] = []
        while self.next_seq in self.pending:
            t = self.pending.pop(self.next_seq)
            self.next_seq += 1
            result = self._present(t)
            if result is not None:
                out.append(result)
            if t.kind is ResultKind.END:
                self.ended = True
                self.pending.clear()
                break
        self.waiting_since = now if self.pending else None
        return out

    def _present(self, t: Transcript) -> ClientResult | None:
        if t.kind is ResultKind.END:
            return self._result(t, "", "")
        if t.utterance_id in self.finalised:
            return None  # a partial never follows its final
        if t.kind is ResultKind.PARTIAL:
            if t.stale or not t.text:
                return None
            stable = stable_prefix(self.last_partial.get(t.utterance_id, ""), t.text)
            self.last_partial[t.utterance_id] = t.text
            return self._result(t, t.text, stable)
        self.finalised.add(t.utterance_id)
        had_partial = self.last_partial.pop(t.utterance_id, None) is not None
        if not t.text and not had_partial:
            return None  # nothing was shown and nothing was said: stay silent
        return self._result(t, t.text, t.text)  # an empty final clears a shown partial

    def _result(self, t: Transcript, text: str, stable: str) -> ClientResult:
        return ClientResult(
            session_id=t.session_id, utterance_id=t.utterance_id, seq=t.seq, kind=t.kind,
            text=text, stable_text=stable, language=t.language, start=t.start, end=t.end,
            words=t.words, speech_end_wall=t.speech_end_wall, speech_start=t.speech_start, endpoint=t.endpoint,
        )
