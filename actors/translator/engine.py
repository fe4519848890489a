"""The narrow interface every MT engine sits behind, and per-pair routing across engines.

An engine answers two questions: can you do src→tgt (cheap: no model load), and translate this batch
(blocking: the caller runs it in a bounded executor). The router picks the first engine, in the
configured order, that can serve a pair, and pivots through a bridge language (English) when none can
serve it directly but two can chain: de→pt = (de→en) then (en→pt).

An engine may also `describe()` itself (up or not, why, the pairs it serves) and `refresh()` (look again: a
hub back, weights added): the translator announces what all of them serve (`catalog`), so a pair nobody serves
is refused where it is asked for instead of being held until a timeout.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from actors.translator.speech import better
from schemas import TranslationCatalog, TranslationEngine, TranslationPair

_CODE = re.compile(r"^[a-z]{2,3}$")


def normalize(code: str) -> str:
    """`pt-BR` / `PT_br` → `pt`: engines here are keyed by ISO 639 base language."""
    return code.strip().replace("_", "-").split("-", 1)[0].lower()


def valid_language(code: str) -> bool:
    return bool(_CODE.match(normalize(code)))


class ErrorKind(enum.StrEnum):
    UNSUPPORTED_PAIR = "unsupported_pair"  # no engine, directly or by pivot
    UNKNOWN_SOURCE = "unknown_source_language"  # nothing to translate from yet
    ENGINE_FAILED = "translation_failed"  # the engine raised (model load or inference)
    TIMEOUT = "translation_timeout"  # not ready within mt_timeout_s (e.g. its model is still loading)


class TranslationError(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Engine(Protocol):
    name: str

    def supports(self, src: str, tgt: str) -> bool:
        """Whether src→tgt can be served without trying a load that will surely fail."""
        ...

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        """Blocking, batched: one output per input, same order."""
        ...

    def loaded_pairs(self) -> list[str]:
        ...

    def close(self) -> None:
        ...


@runtime_checkable
class Described(Protocol):
    """An engine that can say what it serves (every engine of Tolk's; a bare `Engine` is taken as serving what
    its `supports` says, listing nothing)."""

    def describe(self) -> tuple[TranslationEngine, list[TranslationPair]]:
        """Cheap (no I/O): the engine's state and the direct pairs it knows of, available or not."""
        ...

    def refresh(self) -> bool:
        """Looks again (may block: a hub probe, a folder scan); True when what it serves changed."""
        ...


class Unavailable:
    """An engine that could not be built (its package missing, its model not fetchable): serves nothing, says
    why, and `refresh()` tries to build it again, so a translator started before its model hub came up
    recovers without a restart. `built` is the engine once that succeeds (the translator swaps it in)."""

    def __init__(self, name: str, reason: str, build: Callable[[], Engine] | None, retry_s: float) -> None:
        self.name, self.reason, self.build, self.retry_s = name, reason, build, retry_s
        self.built: Engine | None = None

    def supports(self, src: str, tgt: str) -> bool:
        return False

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        raise TranslationError(ErrorKind.UNSUPPORTED_PAIR, f"{self.name} is unavailable: {self.reason}")

    def loaded_pairs(self) -> list[str]:
        return []

    def close(self) -> None:
        pass

    def describe(self) -> tuple[TranslationEngine, list[TranslationPair]]:
        retry = self.retry_s if self.build is not None else 0.0
        return TranslationEngine(name=self.name, available=False, detail=self.reason, retry_s=retry), []

    def refresh(self) -> bool:
        if self.build is None or self.built is not None:
            return False
        try:
            self.built = self.build()
        except Exception as exc:
            self.reason = _reason(exc)
            return False
        return True


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__


def catalog(engines: list[Engine], pivot: str, wanted: set[tuple[str, str]] | None = None,
            speech: Described | None = None) -> TranslationCatalog:
    """What these engines serve, in routing order: each direct pair once (by the first engine that serves it, as
    the router picks), the two-hop pairs through `pivot`, and `wanted` pairs no engine serves, with why.
    `speech` (Whisper's translate task, actors/translator/speech.py) takes a pair where its measured quality is the
    higher, or no text engine serves it."""
    states: list[TranslationEngine] = []
    direct: dict[tuple[str, str], TranslationPair] = {}
    described: list[Engine | Described] = [*engines]
    if speech is not None and speech.describe()[0].available:
        described.append(speech)
    for engine in described:
        if isinstance(engine, Described):
            state, pairs = engine.describe()
        else:
            state, pairs = TranslationEngine(name=engine.name, available=True, any_pair=True), []
        states.append(state)
        for p in pairs:
            held = direct.get((p.source, p.target))
            if held is None or (p.available and not held.available) or (
                    engine is speech and p.available and better(p.quality, held.quality)):
                direct[(p.source, p.target)] = p
    served = {k: p for k, p in direct.items() if p.available}
    bridged: list[TranslationPair] = []
    if pivot:
        for (src, mid), first in served.items():
            if mid != pivot:
                continue
            for (mid2, tgt), second in served.items():
                if mid2 != pivot or tgt == src or (src, tgt) in served:
                    continue
                via = first.engine if first.engine == second.engine else f"{first.engine}+{second.engine}"
                bridged.append(TranslationPair(source=src, target=tgt, engine=via, pivot=pivot,
                                               detail=f"{src}→{pivot}→{tgt}"))
    known = set(direct) | {(p.source, p.target) for p in bridged}
    down = "; ".join(f"{e.name}: {e.detail}" for e in states if not e.available and e.detail)
    missing = [TranslationPair(source=src, target=tgt, engine="", available=False,
                               detail=f"no engine serves it{f' ({down})' if down else ''}")
               for src, tgt in sorted(wanted or ()) if (src, tgt) not in known and src != tgt]
    return TranslationCatalog(engines=tuple(states), pairs=(*direct.values(), *bridged, *missing), pivot=pivot)


@dataclass(frozen=True)
class Step:
    engine: Engine
    src: str
    tgt: str


class Router:
    """Resolves a pair to one step (direct) or two (pivot); remembers answers briefly."""

    def __init__(self, engines: list[Engine], pivot: str = "en", ttl_s: float = 60.0) -> None:
        self.engines = engines
        self.pivot = normalize(pivot) if pivot else ""
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, tuple[Step, ...] | None]] = {}

    def forget(self, src: str, tgt: str) -> None:
        self._cache.pop((src, tgt), None)

    def reset(self) -> None:
        """An engine came or went: every pair is routed afresh."""
        self._cache.clear()

    def route(self, src: str, tgt: str) -> tuple[Step, ...] | None:
        key = (src, tgt)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        steps = self._resolve(src, tgt)
        self._cache[key] = (now, steps)
        return steps

    def _direct(self, src: str, tgt: str) -> Step | None:
        for engine in self.engines:
            if engine.supports(src, tgt):
                return Step(engine, src, tgt)
        return None

    def _resolve(self, src: str, tgt: str) -> tuple[Step, ...] | None:
        direct = self._direct(src, tgt)
        if direct is not None:
            return (direct,)
        if self.pivot and self.pivot not in (src, tgt):
            first, second = self._direct(src, self.pivot), self._direct(self.pivot, tgt)
            if first is not None and second is not None:
                return (first, second)
        return None
