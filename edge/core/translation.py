"""Which translation pairs are served, as the edge needs it: a session's targets are checked at `start` and
`configure` (and an upload's before it is transcribed), so a pair no translator serves is refused at once with
`unsupported_pair` instead of every final going out late without it. The answer comes from the translators'
heartbeats (`ActorHeartbeat.translation`, KV `tolk_actors`: the edge's one cached read, edge/core/heartbeats.py,
or the read a session's start hands over); the reading itself is schemas/translation.py's, shared with `tolk status`.
"""

from __future__ import annotations

from typing import Any

from edge.core.errors import ErrorCode, ProtocolError
from edge.core.heartbeats import Beats, Heartbeats
from schemas import TranslationCatalog
from schemas.translation import summary, unserved


class Translations:
    def __init__(self, beats: Heartbeats) -> None:
        self.beats = beats

    async def catalogs(self, beats: Beats | None = None) -> list[TranslationCatalog]:
        """Every ready translator's catalog (none: nothing is known, nothing is refused), read through `beats` (a
        session start's one read) or else the edge's cache."""
        return [b.translation for b in await (beats or self.beats).read()
                if b.actor == "translator" and b.ready and b.translation is not None]

    async def unserved(self, language: str, targets: tuple[str, ...],
                       beats: Beats | None = None) -> dict[str, str]:
        """target → why no translator serves it from `language` ("auto": from any language)."""
        if not targets:
            return {}
        catalogs = await self.catalogs(beats)
        out = {t: why for t in targets if (why := unserved(catalogs, language, t)) is not None}
        return out

    async def check(self, language: str, targets: tuple[str, ...], keep_open: bool = False,
                    beats: Beats | None = None) -> None:
        """Raises `unsupported_pair` for the first target no translator serves."""
        missing = await self.unserved(language, targets, beats)
        if missing:
            target, why = next(iter(missing.items()))
            raise ProtocolError(ErrorCode.UNSUPPORTED_PAIR, f"target {target!r}: {why}", keep_open=keep_open)

    async def languages(self) -> dict[str, Any]:
        """`GET /v1/languages`: the pairs served, by which engine, with quality where measured; engines that are
        not there, and why."""
        return summary(await self.catalogs())
