"""Text helpers shared by actors (they may not import each other)."""

from __future__ import annotations


def stable_prefix(previous: str, current: str) -> str:
    """Words two consecutive hypotheses agree on (local agreement): unlikely to change again."""
    a, b = previous.split(), current.split()
    n = 0
    while n < min(len(a), len(b)) and a[n].lower().strip(",.!?") == b[n].lower().strip(",.!?"):
        n += 1
    return " ".join(b[:n])
