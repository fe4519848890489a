"""The client for code without an event loop: the async client run on a private loop thread.

    with tolk_client.sync.connect("http://127.0.0.1:8080", language="en") as s:
        for chunk in chunks:
            s.send(chunk)
        s.stop()
        for r in s.results():
            print(r.text)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tolk_client import files
from tolk_client.live import LiveSession
from tolk_client.results import Result

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tolk_client", daemon=True)
        self.thread.start()

    def run(self, aw: Awaitable[T], timeout: float | None = None) -> T:
        async def call() -> T:
            return await aw

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class SyncSession:
    def __init__(self, url: str, **options: Any) -> None:
        self._loop = _Loop()
        self.session: LiveSession = self._loop.run(self._make(url, options))
        self._iter = self.session.__aiter__()

    @staticmethod
    async def _make(url: str, options: dict[str, Any]) -> LiveSession:
        return LiveSession(url, **options)

    def __enter__(self) -> SyncSession:
        self._loop.run(self.session.start())
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def send(self, audio: bytes) -> None:
        self._loop.run(self.session.send(audio))

    def configure(self, **changes: Any) -> None:
        self._loop.run(self.session.configure(**changes))

    def stop(self) -> None:
        self._loop.run(self.session.stop())

    def results(self, timeout: float | None = None) -> Iterator[Result]:
        """Results as they come, until the session is done (blocks between them)."""
        while True:
            try:
                yield self._loop.run(self._iter.__anext__(), timeout)
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self._loop.run(self.session.close())
        self._loop.close()


def connect(url: str, **options: Any) -> SyncSession:
    return SyncSession(url, **options)


def transcribe(url: str, path: str | Path, **options: Any) -> dict[str, Any] | str:
    return asyncio.run(files.transcribe(url, path, **options))


def export(url: str, session_id: str, fmt: str = "srt", **options: Any) -> str:
    return asyncio.run(files.export(url, session_id, fmt, **options))
