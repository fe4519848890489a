"""The narrow interface every MT engine sits behind, and per-pair routing across engines.

An engine answers two questions: can you do src→tgt (cheap: no model load), and translate this batch
(blocking: the caller runs it in a bounded executor). The router picks the first engine, in the
configured order, that can serve a pair, and pivots through a bridge language (English) when none can
serve it directly but two can chain: de→pt = (de→en) then (en→pt).
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass
from typing import Protocol

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
