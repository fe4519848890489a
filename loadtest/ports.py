"""A free port for a server started later (`tolk up --port`, a proxy), chosen where nothing else will take it.

A port the kernel hands out (bind to 0) is free now, but it is released before the server binds it, and
`tolk up` first starts its embedded NATS on a random port from the same ephemeral range: once in a test run
NATS got the edge's port and the readiness check read NATS's INFO line. Ports below that range are never
handed out at random, so only an explicit bind could take one.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

SPAN = 10_000  # ports below the ephemeral range to choose from


def ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    lo, _ = ephemeral_range()
    first = max(1024, lo - SPAN)
    candidates = list(range(first, lo))
    random.shuffle(candidates)
    for port in candidates[:200]:
        if _bindable(port):
            return port
    with socket.socket() as s:  # no room below the range (or all taken): the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
