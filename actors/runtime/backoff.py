"""Reconnect and restart delays: exponential, capped, jittered.

Jitter matters when many clients lose the same server at the same moment (a restarted edge, a NATS
failover, a source that drops for every channel at once): without it they all come back in lockstep and hit
the server as one wave, again and again. Every retry loop in Tolk takes its delay from here.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def delay(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `attempt` (0 = the first retry).

    "Equal jitter": half of the exponential step is fixed, half is random, so a retry never comes back at
    once (which a crash loop would turn into a busy loop) yet a crowd spreads over half the step.
    """
    step = min(cap, base * 2.0 ** min(attempt, 30))
    return step / 2 + rand() * step / 2


def spread(seconds: float, fraction: float = 0.5, rand: Callable[[], float] = random.random) -> float:
    """`seconds` stretched by up to `fraction`, drawn once: for a client library whose own reconnect
    interval is a constant (nats-py's `reconnect_time_wait`), so processes at least differ from each other."""
    return seconds * (1 + fraction * rand())
