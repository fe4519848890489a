"""A bounded executor for blocking model calls, so the event loop never stalls on inference."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class BoundedExecutor:
    """At most `workers` calls run and at most `workers + backlog` are admitted at once."""

    def __init__(self, workers: int, backlog: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._slots = asyncio.Semaphore(workers + backlog)

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def shutdown(self, wait: bool = True) -> None:
        """`wait=False` for work that may not finish (a model download): the process exits anyway."""
        self._pool.shutdown(wait=wait, cancel_futures=True)
