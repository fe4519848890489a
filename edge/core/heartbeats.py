"""The actors' heartbeats (KV `tolk_actors`) as the edge reads them: one cached read for the whole edge, at most
every `ttl_s` however many sessions start at once. A session's start takes a `once()` view of it and hands that
to both of its users, the translation check (the translators' catalogs) and admission (the STT replicas' load):
they judge the same read, made at most once per start and only if one of them needs it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from actors.runtime.actor import heartbeats
from actors.runtime.bus import Bus
from schemas import ActorHeartbeat

TTL_S = 2.0


class Beats(Protocol):
    async def read(self) -> list[ActorHeartbeat]: ...


class Heartbeats:
    def __init__(self, bus: Bus, ttl_s: float = TTL_S) -> None:
        self.bus, self.ttl_s = bus, ttl_s
        self._at = -ttl_s
        self._beats: list[ActorHeartbeat] = []
        self._lock = asyncio.Lock()  # one read however many callers wait on it

    async def read(self) -> list[ActorHeartbeat]:
        """Every live actor's last heartbeat (none if NATS cannot say), at most `ttl_s` old."""
        async with self._lock:
            if time.monotonic() - self._at >= self.ttl_s:
                self._beats = await heartbeats(self.bus)
                self._at = time.monotonic()
            return self._beats

    def once(self) -> Once:
        return Once(self)


class Once:
    """One caller's view (a session's start): the first `read` goes to the edge's cache, later ones get the same
    list."""

    def __init__(self, source: Heartbeats) -> None:
        self.source = source
        self._beats: list[ActorHeartbeat] | None = None

    async def read(self) -> list[ActorHeartbeat]:
        if self._beats is None:
            self._beats = await self.source.read()
        return self._beats
