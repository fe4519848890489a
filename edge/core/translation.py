"""Which translation pairs are served, as the edge needs it: a session's targets are checked at `start` and
`configure` (and an upload's before it is transcribed), so a pair no translator serves is refused at once with
`unsupported_pair` instead of every final going out late without it. The answer comes from the translators'
heartbeats (`ActorHeartbeat.translation`, KV `tolk_actors`), read at most every `ttl_s`; the reading itself is
schemas/translation.py's, shared with `tolk status`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.runtime.actor import heartbeats
from actors.runtime.bus import Bus
from edge.core.errors import ErrorCode, ProtocolError
from schemas import TranslationCatalog
from schemas.translation import summary, unserved


class Translations:
    def __init__(self, bus: Bus, ttl_s: float = 2.0) -> None:
        self.bus, self.ttl_s = bus, ttl_s
        self._at = -ttl_s
        self._catalogs: list[TranslationCatalog] = []
        self._lock = asyncio.Lock()  # one read of the heartbeats however many sessions start at once

    async def catalogs(self) -> list[TranslationCatalog]:
        """Every ready translator's catalog (none: nothing is known, nothing is refused)."""
        async with self._lock:
            if time.monotonic() - self._at >= self.ttl_s:
                beats = await heartbeats(self.bus)
                self._catalogs = [b.translation for b in beats
                                  if b.actor == "translator" and b.ready and b.translation is not None]
                self._at = time.monotonic()
            return self._catalogs

    async def unserved(self, language: str, targets: tuple[str, ...]) -> dict[str, str]:
        """target → why no translator serves it from `language` ("auto": from any language)."""
        if not targets:
            return {}
        catalogs = await self.catalogs()
        out = {t: why for t in targets if (why := unserved(catalogs, language, t)) is not None}
        return out

    async def check(self, language: str, targets: tuple[str, ...], keep_open: bool = False) -> None:
        """Raises `unsupported_pair` for the first target no translator serves."""
        missing = await self.unserved(language, targets)
        if missing:
            target, why = next(iter(missing.items()))
            raise ProtocolError(ErrorCode.UNSUPPORTED_PAIR, f"target {target!r}: {why}", keep_open=keep_open)

    async def languages(self) -> dict[str, Any]:
        """`GET /v1/languages`: the pairs served, by which engine, with quality where measured; engines that are
        not there, and why."""
        return summary(await self.catalogs())
