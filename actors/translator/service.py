"""Translate text once, in batches: a content-keyed cache, in-flight dedupe and per-pair micro-batching.

Every request is keyed by (src, tgt, text). A cached key answers at once; a key already being
translated joins that work (so 50 listeners, or 50 sessions saying "thank you", cost one translation);
anything else queues on its language pair, and a pair's queue is drained in batches of up to
`max_batch` (one engine call) on a bounded executor, so concurrent sessions share model calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from actors.runtime.executor import BoundedExecutor
from actors.translator.engine import Engine, ErrorKind, Router, Step, TranslationError

log = logging.getLogger("tolk.translator.service")

Key = tuple[str, str, str]  # (src, tgt, text)


class LruCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Key, str] = OrderedDict()

    def get(self, key: Key) -> str | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: Key, value: str) -> None:
        if self.size <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class Stats:
    requests: int = 0
    cache_hits: int = 0
    joined: int = 0  # requests that rode on an identical one in flight
    engine_calls: int = 0
    sentences: int = 0  # sentences sent to engines (a pivot counts twice)
    failures: int = 0
    per_pair: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pending:
    text: str
    future: asyncio.Future[str]


class TranslationService:
    def __init__(
        self, router: Router, workers: int = 1, cache_size: int = 10000, max_batch: int = 16,
        batch_wait_s: float = 0.005, queue_limit: int = 1024,
    ) -> None:
        self.router = router
        self.workers = workers
        # One executor per engine: a slow model load in one engine never stalls another's batches.
        self._executors: dict[str, BoundedExecutor] = {}
        self.cache = LruCache(cache_size)
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.queue_limit = queue_limit
        self.stats = Stats()
        self._inflight: dict[Key, asyncio.Future[str]] = {}
        self._queues: dict[tuple[str, str, str], asyncio.Queue[_Pending]] = {}
        self._runners: dict[tuple[str, str, str], asyncio.Task[None]] = {}

    async def translate(self, text: str, src: str, tgt: str) -> str:
        """Raises TranslationError with a code the client sees per target."""
        self.stats.requests += 1
        if src == tgt or not text.strip():
            return text
        key = (src, tgt, text)
        cached = self.cache.get(key)
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        running = self._inflight.get(key)
        if running is not None:
            self.stats.joined += 1
            return await asyncio.shield(running)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._translate_uncached(text, src, tgt)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved: joiners may not exist
            raise
        else:
            self.cache.put(key, result)
            future.set_result(result)
            return result
        finally:
            self._inflight.pop(key, None)

    async def _translate_uncached(self, text: str, src: str, tgt: str) -> str:
        steps = self.router.route(src, tgt)
        if steps is None:
            raise TranslationError(ErrorKind.UNSUPPORTED_PAIR, f"no engine translates {src}→{tgt}")
        if len(steps) == 1:
            return await self._submit(steps[0], text)
        # A pivot: each hop is a request of its own, so it shares the cache and in-flight dedupe
        # (de→pt and de→fr of the same sentence translate de→en once).
        out = text
        for step in steps:
            out = await self.translate(out, step.src, step.tgt)
        return out

    async def _submit(self, step: Step, text: str) -> str:
        qkey = (step.engine.name, step.src, step.tgt)
        queue = self._queues.get(qkey)
        if queue is None:
            queue = self._queues[qkey] = asyncio.Queue(maxsize=self.queue_limit)
        runner = self._runners.get(qkey)
        if runner is None or runner.done():
            self._runners[qkey] = asyncio.create_task(self._run_pair(step, queue), name=f"mt.{'.'.join(qkey)}")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await queue.put(_Pending(text, future))
        return await future

    async def _run_pair(self, step: Step, queue: asyncio.Queue[_Pending]) -> None:
        """Drains one pair's queue in batches; exits when the queue stays empty (recreated on demand)."""
        pair = f"{step.src}-{step.tgt}"
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), timeout=30.0)
            except TimeoutError:
                return
            batch = [first]
            if self.batch_wait_s > 0 and queue.empty():
                await asyncio.sleep(self.batch_wait_s)  # let concurrent sessions' sentences join
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            texts = [p.text for p in batch]
            try:
                outputs = await self._executor(step.engine).run(step.engine.translate, texts, step.src, step.tgt)
                if len(outputs) != len(texts):
                    raise RuntimeError(f"{step.engine.name} returned {len(outputs)} outputs for {len(texts)} inputs")
            except Exception as exc:
                self.stats.failures += 1
                self.router.forget(step.src, step.tgt)
                log.warning("%s %s: batch of %d failed: %s", step.engine.name, pair, len(texts), exc)
                err = TranslationError(ErrorKind.ENGINE_FAILED, f"{step.engine.name} {pair}: {exc}")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            self.stats.engine_calls += 1
            self.stats.sentences += len(texts)
            self.stats.per_pair[pair] = self.stats.per_pair.get(pair, 0) + len(texts)
            for p, out in zip(batch, outputs, strict=True):
                if not p.future.done():
                    p.future.set_result(out)

    def _executor(self, engine: Engine) -> BoundedExecutor:
        ex = self._executors.get(engine.name)
        if ex is None:
            ex = self._executors[engine.name] = BoundedExecutor(self.workers, backlog=0, name=f"mt-{engine.name}")
        return ex

    async def close(self) -> None:
        for task in self._runners.values():
            task.cancel()
        for task in self._runners.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._runners.clear()
        for ex in self._executors.values():
            ex.shutdown(wait=False)

    def engines(self) -> list[Engine]:
        return self.router.engines
