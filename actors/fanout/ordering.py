"""Per-session result ordering: pure logic, no NATS, unit-tested on its own.

Finals (and the END marker) carry a gap-free per-session `final_index` and are released strictly in
that order. Partials never hold anything up: one is shown only when every earlier final is out and
it is newer than anything shown; otherwise it is dropped (or, if earlier finals are still missing,
the newest of its utterance is held, so every utterance waiting behind a slow final still shows text).
So a client sees `seq` increasing and never a partial after its final. A final missing for
`gap_timeout` (never expected: JetStream redelivers) is skipped so a session cannot stall.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.runtime.text import stable_prefix
from schemas import ClientResult, Endpoint, ResultKind, Transcript, client_result


@dataclass
class SessionOrder:
    session_id: str
    next_final: int = 1
    last_seq: int = 0  # highest seq delivered
    finals: dict[int, Transcript] = field(default_factory=dict)  # waiting, by final_index
    held: dict[int, Transcript] = field(default_factory=dict)  # final_index → newest partial waiting for earlier finals
    waiting_since: float | None = None
    last_partial: dict[int, str] = field(default_factory=dict)  # utterance → partial text shown
    ended: bool = False
    touched: float = 0.0

    def offer(self, t: Transcript, now: float) -> list[ClientResult]:
        self.touched = now
        if self.ended or t.final_index < self.next_final:
            return []  # after END, or a duplicate / a partial whose final is already out
        if t.kind is ResultKind.PARTIAL:
            if t.final_index > self.next_final:
                if t.final_index not in self.held or self.held[t.final_index].seq < t.seq:
                    self.held[t.final_index] = t
                return []
            return self._partial(t)
        self.finals[t.final_index] = t
        return self._release(now)

    def skip_gap(self, now: float, timeout: float) -> list[ClientResult]:
        if not self.finals or self.waiting_since is None or now - self.waiting_since < timeout:
            return []
        self.next_final = min(self.finals)
        return self._release(now)

    def _release(self, now: float) -> list[ClientResult]:
        out: list[ClientResult] = []
        while self.next_final in self.finals and not self.ended:
            t = self.finals.pop(self.next_final)
            self.next_final += 1
            out.extend(self._final(t))
        for index in sorted(i for i in self.held if i <= self.next_final):
            held = self.held.pop(index)
            if index == self.next_final and not self.ended:
                out.extend(self._partial(held))
        self.waiting_since = now if self.finals and not self.ended else None
        return out

    def _partial(self, t: Transcript) -> list[ClientResult]:
        if t.seq <= self.last_seq or not t.text:
            return []
        stable = stable_prefix(self.last_partial.get(t.utterance_id, ""), t.text)
        self.last_partial[t.utterance_id] = t.text
        return [self._emit(t, t.text, stable)]

    def _final(self, t: Transcript) -> list[ClientResult]:
        if t.kind is ResultKind.END:
            self.ended = True
            self.finals.clear()
            self.held.clear()
            return [self._emit(t, "", "")]
        had_partial = self.last_partial.pop(t.utterance_id, None) is not None
        if not t.text and not had_partial and t.endpoint is not Endpoint.FLUSH:
            return []  # nothing was shown and nothing was said: stay silent (a flush is always answered)
        return [self._emit(t, t.text, t.text)]  # an empty final clears a shown partial

    def _emit(self, t: Transcript, text: str, stable: str) -> ClientResult:
        self.last_seq = max(self.last_seq, t.seq)
        return client_result(t, text, stable)
