"""Detached sessions: a dropped client's session waits `resume_grace_s` for a resume (on any edge), then ends.

The timers are this edge's; the truth is the session record in KV, so a resume elsewhere, which bumps the
record's epoch, makes this edge's timer a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from edge.core.commands import Start
from edge.core.pipeline import Pipeline
from edge.core.records import Conflict, Listeners, Sessions

log = logging.getLogger("tolk.edge.resume")


class Detached:
    def __init__(self, sessions: Sessions, listeners: Listeners, pipeline: Pipeline, grace_s: float) -> None:
        self.sessions, self.listeners, self.pipeline, self.grace_s = sessions, listeners, pipeline, grace_s
        self._ending: dict[str, asyncio.Task[None]] = {}

    def end_later(self, sid: str, epoch: int, start: Start) -> None:
        """Ended after the grace unless a resume (on any edge) claimed it meanwhile."""
        self.cancel(sid)
        self._ending[sid] = asyncio.create_task(self._end(sid, epoch, start), name=f"edge.detached.{sid}")

    def cancel(self, sid: str) -> None:
        task = self._ending.pop(sid, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        """Shutdown: the sessions are left detached, resumable on another edge."""
        for task in list(self._ending.values()):
            task.cancel()

    async def _end(self, sid: str, epoch: int, start: Start) -> None:
        try:
            await asyncio.sleep(self.grace_s)
            rec, revision = await self.sessions.get(sid)
            if rec is None or rec.epoch != epoch or rec.status != "detached":
                return  # resumed (or ended) meanwhile
            try:
                await self.sessions.claim(msgspec.structs.replace(rec, status="closed", updated_at=time.time()),
                                          revision)
            except Conflict:
                return  # a resume won the race: it owns the session now
            # Numbered past anything that connection could have sent: the segmenter flushes and ends it.
            await self.pipeline.publish(sid, (epoch << 32) + (1 << 31), b"", sample_rate=start.sample_rate,
                                        encoding=start.encoding, language=start.language, end=True,
                                        endpoint_ms=start.endpoint_ms, max_utterance_s=start.max_utterance_s,
                                        diarize=start.diarize, max_speakers=start.max_speakers)
            await self.listeners.remove(sid, "owner")
            log.info("%s: not resumed within %.0f s; ended", sid, self.grace_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # KV or NATS away: the pipeline reaps the idle session later anyway
            log.warning("%s: detached session not ended: %s", sid, exc)
        finally:
            if self._ending.get(sid) is asyncio.current_task():
                del self._ending[sid]
