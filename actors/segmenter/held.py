"""A session's audio chunks that are consumed but not acked, because a replay after a crash would need them.

TOLK_AUDIO is a work queue: an acked chunk is deleted. So a chunk is acked only once a stored checkpoint
covers it (its utterance's final is out, or it fell out of the pre-roll in silence); until then the stream
keeps it, and a restarted segmenter gets it again, in order (docs/operations.md#when-something-crashes).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from nats.aio.msg import Msg

from actors.segmenter.vad import FRAME


@dataclass(slots=True)
class Held:
    chunk_seq: int
    start: int  # 16 kHz sample offset of its first (kept) sample in the session's stream
    end: int
    msg: Msg
    since: float  # monotonic: consumed, or last marked in progress

    @property
    def stream_seq(self) -> int:
        return self.msg.metadata.sequence.stream


@dataclass(frozen=True)
class Resume:
    """Where a replay starts: chunks up to `last_chunk` are skipped, then `skip` samples of the next one."""

    last_chunk: int
    skip: int
    frames: int  # the stream clock there


class HeldChunks:
    def __init__(self) -> None:
        self._q: deque[Held] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._q)

    def add(self, held: Held) -> None:
        self._q.append(held)

    def find(self, stream_seq: int) -> Held | None:
        return next((h for h in self._q if h.stream_seq == stream_seq), None)

    def done_before(self, sample: int) -> int:
        """How many of the oldest chunks lie wholly before `sample`."""
        n = 0
        for h in self._q:
            if h.end > sample:
                break
            n += 1
        return n

    def samples_in(self, n: int) -> int:
        return sum(self._q[i].end - self._q[i].start for i in range(n))

    def resume_at(self, sample: int, last_consumed: int) -> Resume:
        """The resume point for a replay from `sample` (a frame boundary)."""
        for h in self._q:
            if h.end > sample:
                return Resume(h.chunk_seq - 1, max(0, sample - h.start), sample // FRAME)
        return Resume(last_consumed, 0, sample // FRAME)

    def pop(self, n: int) -> list[Held]:
        return [self._q.popleft() for _ in range(min(n, len(self._q)))]

    def nth_start(self, n: int) -> int:
        return self._q[n].start
