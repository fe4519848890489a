"""Normalised word error rate, as ASR benchmarks report it (lower-case, no punctuation, digits spelt)."""

from __future__ import annotations

import re
import unicodedata

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "\
    "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _under_100(n: int) -> str:
    return _ONES[n] if n < 20 else _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])


def _cardinal(n: int) -> str:
    if n < 100:
        return _under_100(n)
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + (" " + _under_100(rest) if rest else "")
    if n < 1_000_000:
        rest = n % 1000
        return _cardinal(n // 1000) + " thousand" + (" " + _cardinal(rest) if rest else "")
    return " ".join(_ONES[int(d)] for d in str(n))


def spell_number(token: str) -> str:
    n = int(token)
    if len(token) == 4 and 1100 <= n <= 1999 and n % 100 != 0:  # years: 1813 → eighteen thirteen
        return _under_100(n // 100) + " " + _under_100(n % 100)
    return _cardinal(n)


def normalise(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)
    text = re.sub(r"\d+", lambda m: " " + spell_number(m.group()) + " ", text)
    text = re.sub(r"[-‐–—/]", " ", text)
    text = re.sub(r"[^\w\s']", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return text.split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    """Sum of edits over sum of reference words: long clips weigh as much as they speak."""
    errors = words = 0
    for ref, hyp in pairs:
        r, h = normalise(ref), normalise(hyp)
        errors += edit_distance(r, h)
        words += len(r)
    return errors / max(1, words)
