"""What a transport is given: the edge's services, built once by edge/app.py. Each is narrow; a transport uses
the few it needs instead of reaching into one object that does everything."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from actors.runtime.bus import Bus
from edge.core.admission import Admission
from edge.core.files import FileJobs
from edge.core.heartbeats import Heartbeats
from edge.core.metrics import EdgeMetrics
from edge.core.pipeline import Pipeline
from edge.core.records import Channels, Listeners, Sessions
from edge.core.registry import Registry
from edge.core.resume import Detached
from edge.core.translation import Translations
from edge.settings import EdgeSettings


@dataclass
class Services:
    cfg: EdgeSettings
    bus: Bus
    instance: str  # this edge's name, written into the records it owns
    registry: Registry
    admission: Admission
    sessions: Sessions
    listeners: Listeners
    channels: Channels
    pipeline: Pipeline
    detached: Detached
    metrics: EdgeMetrics
    files: FileJobs
    translations: Translations  # which pairs the translators serve: targets are checked against it
    beats: Heartbeats  # the actors' heartbeats, one cached read for the edge (a start hands its read to both above)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def build(cls, bus: Bus, cfg: EdgeSettings, instance: str, partitions: int) -> Services:
        registry, sessions, listeners = Registry(), Sessions(bus), Listeners(bus, instance)
        pipeline, metrics, beats = Pipeline(bus, partitions), EdgeMetrics(), Heartbeats(bus)
        return cls(cfg=cfg, bus=bus, instance=instance, registry=registry,
                   admission=Admission(bus, cfg, registry, beats),
                   sessions=sessions, listeners=listeners, channels=Channels(bus), pipeline=pipeline,
                   detached=Detached(sessions, listeners, pipeline, cfg.resume_grace_s), metrics=metrics,
                   files=FileJobs(cfg, pipeline, sessions, listeners, metrics, instance),
                   translations=Translations(beats), beats=beats)

    def background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task owned by the edge (kept referenced until done, awaited on close): connection clean-ups that
        must finish although aiohttp cancels the handler of a client that went away."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self) -> None:
        self.detached.close()  # left detached: resumable on another edge
        if self.tasks:  # connection clean-ups still writing their records
            await asyncio.wait(list(self.tasks), timeout=10)
