"""Who reads a stream, in which languages: KV `tolk_listeners`, written by edges, read by the translator.

A key is `<stream>.<listener>`. The edge writes one record per WebSocket client (a microphone session
is the one listener of its own stream; a broadcast channel has many) and refreshes it while the client
is connected; the bucket's TTL removes the records of an edge that died. The translator keeps a live,
eventually consistent `ListenerView` from a KV watch and translates a stream's text once into the
union of its listeners' targets, however many listeners there are.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js.kv import KeyValue

from actors.runtime import backoff
from schemas import DecodeError, ListenerRecord, decode, encode

log = logging.getLogger("tolk.listeners")

BUCKET = "tolk_listeners"
REFRESH_S = 120.0  # edges re-put live listeners this often
STALE_S = 600.0  # = the bucket's TTL: KV expiry sends watchers no delete, so the view ages records out


def listener_key(stream_id: str, listener_id: str) -> str:
    return f"{stream_id}.{listener_id}"


async def put_listener(kv: KeyValue, record: ListenerRecord) -> None:
    await kv.put(listener_key(record.stream_id, record.listener_id), encode(record))


async def remove_listener(kv: KeyValue, stream_id: str, listener_id: str) -> None:
    await kv.delete(listener_key(stream_id, listener_id))


class ListenerView:
    """Union of targets per stream, kept current by `watch()`; pure `apply()` for tests."""

    def __init__(self, stale_s: float = STALE_S) -> None:
        self.stale_s = stale_s
        self._streams: dict[str, dict[str, ListenerRecord]] = {}
        self.synced = asyncio.Event()  # set once the initial KV contents are loaded

    def apply(self, key: str, value: bytes | None) -> None:
        stream_id, _, listener_id = key.partition(".")
        if value is None:
            listeners = self._streams.get(stream_id)
            if listeners is not None:
                listeners.pop(listener_id, None)
                if not listeners:
                    del self._streams[stream_id]
            return
        try:
            record = decode(value, ListenerRecord)
        except DecodeError as exc:
            log.error("ignoring undecodable listener record %s: %s", key, exc)
            return
        self._streams.setdefault(stream_id, {})[listener_id] = record

    def targets(self, stream_id: str, partial: bool = False) -> tuple[str, ...]:
        """Sorted union of targets; for a partial, only of listeners that asked for partial translations."""
        out: set[str] = set()
        oldest = time.time() - self.stale_s
        for record in self._streams.get(stream_id, {}).values():
            if record.updated_at < oldest:
                continue
            if not partial or record.translate_partials:
                out.update(record.targets)
        return tuple(sorted(out))

    def listeners(self, stream_id: str) -> int:
        oldest = time.time() - self.stale_s
        return sum(r.updated_at >= oldest for r in self._streams.get(stream_id, {}).values())

    async def watch(self, kv: KeyValue) -> None:
        """Follow the bucket forever (re-watching after errors); cancel to stop."""
        while True:
            try:
                watcher = await kv.watchall()
                try:
                    while True:
                        entry = await watcher.updates(timeout=None)  # type: ignore[no-untyped-call]
                        if entry is None:  # end of the initial values
                            self.synced.set()
                            continue
                        deleted = entry.operation in ("DEL", "PURGE")
                        self.apply(entry.key, None if deleted else entry.value)
                finally:
                    await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listener watch failed (%s); re-watching", exc)
                await asyncio.sleep(backoff.delay(1, 0.5, 1.0))
