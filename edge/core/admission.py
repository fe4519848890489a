"""Load shedding for new microphone sessions: refusing one is better than every session falling behind.

A resume is never refused here: it is a session already admitted.
"""

from __future__ import annotations

import logging
import time

from actors.runtime import pools
from actors.runtime.bus import Bus
from edge.core.errors import ErrorCode, ProtocolError
from edge.core.registry import Registry
from edge.settings import EdgeSettings

log = logging.getLogger("tolk.edge.admission")


class Admission:
    def __init__(self, bus: Bus, cfg: EdgeSettings, registry: Registry) -> None:
        self.bus, self.cfg, self.registry = bus, cfg, registry
        self.pools = pools.load()  # a new session is shed on the backlog of the pool its language goes to
        self._backlog: dict[str, tuple[float, int]] = {}

    async def admit(self, token: str = "", language: str = "auto") -> None:
        per_token = self.cfg.max_sessions_per_token
        if token and per_token and self.registry.per_token(token) >= per_token:
            raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, f"this API token already has {per_token} sessions "
                                "streaming here")
        if self.cfg.max_sessions and len(self.registry.sessions) >= self.cfg.max_sessions:
            raise ProtocolError(ErrorCode.OVERLOADED, f"this server is at its limit of {self.cfg.max_sessions} "
                                "sessions; try again shortly")
        backlog = await self.stt_backlog(language)
        if self.cfg.shed_backlog and backlog > self.cfg.shed_backlog:
            raise ProtocolError(ErrorCode.OVERLOADED, f"speech recognition is {backlog} utterances behind; try "
                                "again shortly")

    async def stt_backlog(self, language: str = "auto") -> int:
        """Finals not yet handed to any STT replica of the pool serving `language` (cached 2 s per pool; 0 if
        NATS cannot say)."""
        pool = self.pools.route(language).name
        at, value = self._backlog.get(pool, (0.0, 0))
        if time.monotonic() - at < 2.0:
            return value
        try:
            info = await self.bus.js.consumer_info("TOLK_SEGMENTS", pools.durable("final", pool))
            value = int(info.num_pending or 0)
        except Exception as exc:
            log.warning("stt backlog of pool %s unknown: %s", pool, exc)
            value = 0
        self._backlog[pool] = (time.monotonic(), value)
        return value

    def model(self, language: str) -> str:
        """The model of the STT pool that serves `language` (what vendor APIs report as theirs)."""
        return self.pools.route(language).model
