"""Handing freed native memory back to the operating system.

Model runtimes (CTranslate2 here) allocate and free large buffers of many sizes from several threads; glibc
keeps what is freed in per-thread arenas, so a long-running STT process's RSS creeps up although nothing leaks
(the 30-minute soak: the English pool grew 6 MiB/min over its second half while every Python-side structure
stayed bounded). `malloc_trim(0)` returns those free pages; it takes milliseconds, so it runs at most every
`every_s`, in the model's own executor between batches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_trim: Callable[[int], int] | None = getattr(_libc, "malloc_trim", None)  # glibc only (not musl, not macOS)


def trim() -> bool:
    """Free pages back to the OS; False where the C library has no malloc_trim."""
    return bool(_trim(0)) if _trim is not None else False


class Trimmer:
    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._last = time.monotonic()

    def due(self) -> bool:
        if _trim is None or time.monotonic() - self._last < self.every_s:
            return False
        self._last = time.monotonic()
        return True
