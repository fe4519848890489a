"""What translators serve: each instance's `TranslationCatalog` (in its heartbeat, KV `tolk_actors`), and the pure
reading of all of them that the edge (`unsupported_pair` at start/configure, `GET /v1/languages`) and
`tolk status` share, so the answer to "is de→en served?" is computed one way everywhere.

A pair is served when some live translator lists it available, directly or through a pivot, or has an available
engine that serves more than it lists (`any_pair`: a reachable model hub, models fetched on first use, or
`languages`: a many-to-many model). With no catalog at all (no translator up yet, or one older than catalogs)
nothing is known and nothing is refused: the translator answers per final.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec


class TranslationPair(msgspec.Struct, frozen=True, kw_only=True):
    """One source→target an engine serves (or would, if it were available). Engines added later (Whisper's own
    translate task, say) add entries with their `engine` name; a pivot names both hops' engines, `a+b`."""

    source: str
    target: str
    engine: str
    available: bool = True
    pivot: str = ""  # the bridge language of a two-hop route ("" = direct)
    quality: float | None = None  # chrF (0-100) measured on real speech, where known
    detail: str = ""  # why it is unavailable, or how it is served ("downloaded on first use")


class TranslationEngine(msgspec.Struct, frozen=True, kw_only=True):
    """One engine of a translator: up or not, and why."""

    name: str
    available: bool
    detail: str = ""
    any_pair: bool = False  # serves pairs beyond those listed (a reachable hub: each fetched on first use)
    languages: tuple[str, ...] = ()  # a many-to-many model: every pair among these
    retry_s: float = 0.0  # unavailable (or partly): retried in the background every this many seconds


class TranslationCatalog(msgspec.Struct, frozen=True, kw_only=True):
    """What one translator instance serves now; rebuilt when an engine comes or goes."""

    engines: tuple[TranslationEngine, ...] = ()
    pairs: tuple[TranslationPair, ...] = ()
    pivot: str = ""


SPEECH_ENGINE = "whisper"  # Whisper's own translate task, run by STT on a final's audio (X→en)
# chrF against FLORES references of Whisper's translate task on the corpus' FLEURS clips (one call per clip, beam
# 5, 30 s window: `python -m loadtest.translate --quality`), by STT model and source language. A pair is routed to
# whichever engine has the higher measured chrF; unmeasured ones keep the text engines' order.
SPEECH_QUALITY: dict[str, dict[str, float]] = {"base": {"de": 47.3, "fr": 40.9, "es": 45.0, "pt": 52.9}}


def speech_wanted(catalogs: Iterable[TranslationCatalog], source: str, targets: Iterable[str]) -> bool:
    """Whether some target of a `source` final is served through Whisper's translate task (`whisper`, or a pivot
    whose first hop it is): STT then decodes the final's audio a second time for it."""
    src = base(source)
    wanted = {base(t) for t in targets} - {src}
    if not wanted or src in ("", "auto", "en"):
        return False
    return any(p.available and p.source == src and p.target in wanted and
               (p.engine == SPEECH_ENGINE or p.engine.startswith(SPEECH_ENGINE + "+"))
               for c in catalogs for p in c.pairs)


def base(code: str) -> str:
    """`pt-BR` / `PT_br` → `pt`: translators key pairs by base language (as actors/translator does)."""
    return code.strip().replace("_", "-").split("-", 1)[0].lower()


def unserved(catalogs: Iterable[TranslationCatalog], source: str, target: str) -> str | None:
    """Why no translator serves `source`→`target` (source "auto": from any language), or None when one does or
    nothing is known yet."""
    known = list(catalogs)
    src, tgt = base(source), base(target)
    if not known or src == tgt:
        return None
    for catalog in known:
        for engine in catalog.engines:
            if not engine.available:
                continue
            if engine.any_pair:
                return None
            if tgt in engine.languages and (src == "auto" or src in engine.languages):
                return None
        for pair in catalog.pairs:
            if pair.available and pair.target == tgt and (src == "auto" or pair.source == src):
                return None
    what = f"into {target!r} from any language" if src == "auto" else f"{source}→{target}"
    listed = [p for c in known for p in c.pairs if p.target == tgt and p.source == src and p.detail]
    down = sorted({f"{e.name}: {e.detail}" for c in known for e in c.engines if not e.available and e.detail})
    why = listed[0].detail if listed else "; ".join(down)
    return f"no translation engine here translates {what}" + (f": {why}" if why else "") + \
        "; GET /v1/languages lists the pairs served"


def summary(catalogs: Iterable[TranslationCatalog]) -> dict[str, Any]:
    """Every translator's catalog merged, as `GET /v1/languages` and `tolk status --json` show it: a pair is
    available when any instance serves it; an engine counts the instances where it is up."""
    known = list(catalogs)
    pairs: dict[tuple[str, str, str], dict[str, Any]] = {}
    for catalog in known:
        for p in catalog.pairs:
            row = pairs.setdefault((p.source, p.target, p.engine), {
                "source": p.source, "target": p.target, "engine": p.engine, "available": False, "pivot": p.pivot,
                "quality": p.quality, "detail": p.detail})
            if p.available and not row["available"]:
                row.update(available=True, detail=p.detail)
            if row["quality"] is None:
                row["quality"] = p.quality
    engines: dict[str, dict[str, Any]] = {}
    for catalog in known:
        for e in catalog.engines:
            row = engines.setdefault(e.name, {"name": e.name, "available": False, "up": 0, "down": 0,
                                              "any_pair": False, "languages": list(e.languages), "detail": e.detail,
                                              "retry_s": e.retry_s})
            row["up" if e.available else "down"] += 1
            if e.available and not row["available"]:
                row.update(available=True, detail=e.detail, any_pair=e.any_pair)
    ordered = sorted(pairs.values(), key=lambda r: (not r["available"], bool(r["pivot"]), r["source"], r["target"]))
    return {"translators": len(known), "pivot": next((c.pivot for c in known if c.pivot), ""),
            "engines": sorted(engines.values(), key=lambda r: str(r["name"])), "pairs": ordered,
            "any_pair": any(r["available"] and r["any_pair"] for r in engines.values())}
