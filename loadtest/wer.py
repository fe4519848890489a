"""Word error rate as Whisper's papers report it: Whisper's own text normalisers, jiwer's alignment.

English goes through `EnglishTextNormalizer` (spelling variants, numbers to digits, contractions),
every other language through `BasicTextNormalizer` (case, diacritics kept, punctuation and brackets
dropped), so figures compare with published Whisper numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import jiwer
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer


@cache
def _english() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


@cache
def _basic() -> BasicTextNormalizer:
    return BasicTextNormalizer()


def normalise(text: str, language: str = "en") -> list[str]:
    """Words after Whisper's normaliser for `language` (English rules only for English)."""
    norm = _english() if language.split("-")[0] == "en" else _basic()
    return str(norm(text)).split()


@dataclass(frozen=True)
class Counts:
    """Edit operations of an alignment; add them up over clips for a corpus figure."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    words: int = 0  # in the reference

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.errors / max(1, self.words)

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.substitutions + other.substitutions, self.deletions + other.deletions,
                      self.insertions + other.insertions, self.words + other.words)


def counts(reference: str, hypothesis: str, language: str = "en") -> Counts:
    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    if not ref:
        return Counts(insertions=len(hyp))
    if not hyp:
        return Counts(deletions=len(ref), words=len(ref))
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return Counts(out.substitutions, out.deletions, out.insertions, len(ref))


def corpus_counts(pairs: Iterable[tuple[str, str]], language: str = "en") -> Counts:
    total = Counts()
    for ref, hyp in pairs:
        total = total + counts(ref, hyp, language)
    return total


def corpus_wer(pairs: Iterable[tuple[str, str]], language: str = "en") -> float:
    """Sum of edits over sum of reference words: long clips weigh as much as they speak."""
    return corpus_counts(pairs, language).wer
