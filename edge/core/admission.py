"""Load shedding for new microphone sessions: refusing one is better than every session falling behind.

Three limits, cheapest first: a fixed count per token and per edge (where an operator sets one); the STT pool's
measured capacity — each STT replica announces in its heartbeat how busy its final lane was over the last 10 s
and what one session costs it (actors/stt/load.py), and a new session is admitted only while one more session at
that cost, on top of the pool's busy or of what this edge's live sessions cost (whichever is more), stays under
`admit_final_busy` per replica; and, as the last resort once finals already queue, the pool's backlog. A resume is
never refused here: it is a session already admitted.
"""

from __future__ import annotations

import logging
import time

from actors.runtime import pools
from actors.runtime.bus import Bus
from edge.core.errors import ErrorCode, ProtocolError
from edge.core.heartbeats import Beats, Heartbeats
from edge.core.registry import Registry
from edge.settings import EdgeSettings

log = logging.getLogger("tolk.edge.admission")

REGISTERING_S = 10.0  # an admitted session counts as live this long before the registry has it


class Admission:
    def __init__(self, bus: Bus, cfg: EdgeSettings, registry: Registry, beats: Heartbeats) -> None:
        self.bus, self.cfg, self.registry, self.beats = bus, cfg, registry, beats
        self.pools = pools.load()  # a new session is shed on the backlog of the pool its language goes to
        self._backlog: dict[str, tuple[float, int]] = {}
        # pool → session → (when admitted, its channels), until registered
        self._admitted: dict[str, dict[str, tuple[float, int]]] = {}

    async def admit(self, token: str = "", language: str = "auto", session_id: str = "", channels: int = 1,
                    beats: Beats | None = None) -> None:
        """`channels`: a multichannel session runs that many pipelines, and costs that many sessions' capacity;
        `beats`: the start's heartbeat read, shared with its translation check."""
        per_token = self.cfg.max_sessions_per_token
        if token and per_token and self.registry.per_token(token) >= per_token:
            raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, f"this API token already has {per_token} sessions "
                                "streaming here")
        if self.cfg.max_sessions and len(self.registry.sessions) >= self.cfg.max_sessions:
            raise ProtocolError(ErrorCode.OVERLOADED, f"this server is at its limit of {self.cfg.max_sessions} "
                                "sessions; try again shortly")
        await self.within_capacity(language, session_id, channels, beats)
        backlog = await self.stt_backlog(language)
        if self.cfg.shed_backlog and backlog > self.cfg.shed_backlog:
            raise ProtocolError(ErrorCode.OVERLOADED, f"speech recognition is {backlog} utterances behind; try "
                                "again shortly")

    async def within_capacity(self, language: str = "auto", session_id: str = "", channels: int = 1,
                              beats: Beats | None = None) -> None:
        """Refuses a session the pool's measured capacity cannot hold: one more session at the measured cost, on
        top of the larger of the pool's busy (every edge's sessions, once they speak) and what this edge's live
        sessions cost (a burst of starts shows no busy until they speak). With no cost measured yet (a fresh
        pool), only the busy counts."""
        limit = self.cfg.admit_final_busy
        if limit <= 0:
            return
        pool = self.pools.route(language).name
        loads = [i for i in await self._stt_loads(beats) if i.get("pool") == pool]
        if not loads:
            return
        busy = sum(_number(i, "final_busy") for i in loads)
        costs = [c for i in loads if (c := _number(i, "session_cost")) > 0]
        cost = sum(costs) / len(costs) if costs else 0.0
        live = self._live(pool)
        projected = max(busy, cost * sum(live.values())) + cost * channels
        if projected > limit * len(loads):
            log.info("refused a %s session: pool %s projected %.2f busy (measured %.2f, %d live here at %.3f each) "
                     "over %.2f", language, pool, projected, busy, len(live), cost, limit * len(loads))
            raise ProtocolError(ErrorCode.OVERLOADED, "speech recognition for this language is at its measured "
                                f"capacity ({busy / len(loads):.0%} busy); try again shortly")
        if session_id:
            self._admitted.setdefault(pool, {})[session_id] = (time.monotonic(), channels)

    def _live(self, pool: str) -> dict[str, int]:
        """This edge's sessions on `pool` and the pipelines each runs: registered, or admitted moments ago and
        registering now."""
        now = time.monotonic()
        admitted = self._admitted.setdefault(pool, {})
        for sid in [sid for sid, (at, _) in admitted.items()
                    if at < now - REGISTERING_S or sid in self.registry.sessions]:
            del admitted[sid]  # registered now (the registry counts it while it lives), or never registered
        live = {sid: s.channels for sid, s in self.registry.sessions.items()
                if self.pools.route(s.language or "auto").name == pool}
        return {**{sid: n for sid, (_, n) in admitted.items()}, **live}

    async def _stt_loads(self, beats: Beats | None) -> list[dict[str, str]]:
        """What each ready STT replica announced about its load (none if NATS cannot say), read through `beats` (a
        session start's one read) or else the edge's cache."""
        try:
            read = await (beats or self.beats).read()
        except Exception as exc:
            log.warning("stt load unknown: %s", exc)
            return []
        return [b.info for b in read if b.actor == "stt" and b.ready and "final_busy" in b.info]

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


def _number(info: dict[str, str], key: str) -> float:
    try:
        return max(0.0, float(info.get(key, "0")))
    except ValueError:  # another version's heartbeat
        return 0.0
