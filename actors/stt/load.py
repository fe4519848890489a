"""The final lane's measured load: what the STT spends on finals, per session, and what follows from it.

Three things act on it. The finals' quality tier (actors/stt/actor.py `_final_quality`) reads the last 10 s. The
partial lane yields to finals as the lane fills (`partial_pause`): partials are thinned, finals keep their pace.
And the heartbeat announces it (`announce`), so the edge admits a new session only while the pool's measured
capacity holds one more (edge/core/admission.py): past the knee, refusing the next session up front is better
than every session falling behind.

Busy is model-call seconds per wall second, summed over the lane's concurrent calls (so it can pass 1 with two
slots); the heartbeat announces it over the last 10 s. A session's cost is the busy of the last 30 s divided by
the sessions the lane served in them, sampled only while at least two were served (one session's pauses say
little) and kept as a moving average, so the edge can price a session even when the lane has just gone quiet.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

COST_WINDOW_S = 30.0  # a session's cost is sampled over this much: long enough to span a few of its utterances
BUSY_WINDOW_S = 10.0  # the busy announced: recent enough that sessions which ended stop counting soon
COST_ALPHA = 0.2  # moving average of a session's cost (one sample per announce)


class FinalLoad:
    def __init__(self, window_s: float = COST_WINDOW_S) -> None:
        self.window_s = window_s
        self._calls: deque[tuple[float, float]] = deque()  # (ended, seconds) of final-lane model calls
        self._sessions: dict[str, float] = {}  # session → when its last final-lane item was decoded
        self.session_cost = 0.0  # busy per session (0: not measured yet)

    def record(self, took: float, sessions: Iterable[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._calls.append((now, took))
        for s in sessions:
            self._sessions[s] = now
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._calls and self._calls[0][0] < now - self.window_s:
            self._calls.popleft()
        for s in [s for s, at in self._sessions.items() if at < now - self.window_s]:
            del self._sessions[s]

    def busy(self, window_s: float, now: float | None = None) -> float:
        """Model-call seconds per second over the last `window_s` (≤ the tracker's window)."""
        now = time.monotonic() if now is None else now
        start = now - window_s
        return sum(min(took, end - start) for end, took in self._calls if end > start) / window_s

    def sessions(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        self._expire(now)
        return len(self._sessions)

    def announce(self, now: float | None = None) -> dict[str, str]:
        """The heartbeat's load fields (and one cost sample)."""
        now = time.monotonic() if now is None else now
        busy, n = self.busy(self.window_s, now), self.sessions(now)
        if n >= 2 and busy > 0.0:
            sample = busy / n
            self.session_cost = sample if self.session_cost == 0.0 else \
                (1 - COST_ALPHA) * self.session_cost + COST_ALPHA * sample
        return {"final_busy": f"{self.busy(BUSY_WINDOW_S, now):.3f}", "final_sessions": str(n),
                "session_cost": f"{self.session_cost:.4f}"}


def partial_pause(took: float, busy: float, thin_above: float, max_ratio: float) -> float:
    """How long the partial lane waits after a call that took `took`, with the final lane `busy`: nothing below
    `thin_above`, then a pause growing linearly to `max_ratio` times the call at busy 1 (the partial lane's share
    of the model falls from all of it to 1 / (1 + max_ratio))."""
    if thin_above <= 0 or busy <= thin_above:
        return 0.0
    ratio = max_ratio * min(1.0, (busy - thin_above) / max(1e-9, 1.0 - thin_above))
    return took * ratio
