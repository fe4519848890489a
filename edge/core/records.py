"""What the edge keeps in NATS KV, as typed wrappers over one bucket each (nats.py's `KeyValue` style).

Session records (`tolk_sessions`) are claimed and moved on by compare-and-set, so two connections (on any edges)
can never both own a session; listener records (`tolk_listeners`) tell the translator whom a stream is translated
for; channel records (`tolk_channels`) are read, never written, here.
"""

from __future__ import annotations

import contextlib
import logging
import time

import msgspec
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError

from actors.runtime import channels, listeners
from actors.runtime.bus import Bus
from schemas import ChannelRecord, DecodeError, IngestLease, ListenerRecord, SessionRecord, decode, encode

log = logging.getLogger("tolk.edge.records")

SESSIONS = "tolk_sessions"  # KV: SessionRecord per session id


class Conflict(Exception):
    """A compare-and-set lost: someone else wrote the record since it was read."""


class Sessions:
    """Session records, one per session id."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def get(self, sid: str) -> tuple[SessionRecord | None, int | None]:
        """The record and its revision, for `update(..., last=revision)` (None, None: none, or unreadable)."""
        kv = await self.bus.kv(SESSIONS)
        try:
            entry = await kv.get(sid)
            return (decode(entry.value, SessionRecord) if entry.value else None), entry.revision
        except (KeyNotFoundError, KeyDeletedError, DecodeError):
            return None, None

    async def claim(self, record: SessionRecord, last: int | None) -> None:
        """Create (`last` None) or replace the record read at revision `last`; `Conflict` if that lost a race."""
        kv = await self.bus.kv(SESSIONS)
        try:
            if last is None:
                await kv.create(record.session_id, encode(record))
            else:
                await kv.update(record.session_id, encode(record), last=last)
        except KeyWrongLastSequenceError:
            raise Conflict(record.session_id) from None

    async def put(self, record: SessionRecord) -> None:
        await (await self.bus.kv(SESSIONS)).put(record.session_id, encode(record))

    async def set_status(self, sid: str, status: str, epoch: int | None = None, **changes: object) -> bool:
        """Moves the record to `status` (compare-and-set); with `epoch`, only while that connection still owns it.
        False when nothing was written (no record, a newer owner, or a lost race)."""
        rec, revision = await self.get(sid)
        if rec is None or (epoch is not None and rec.epoch != epoch):
            return False
        new = msgspec.structs.replace(rec, status=status, updated_at=time.time(), **changes)
        try:
            await self.claim(new, revision)
        except Conflict:
            return False
        return True


class Listeners:
    """Listener records: who reads a stream and in which languages (actors/runtime/listeners.py)."""

    def __init__(self, bus: Bus, instance: str) -> None:
        self.bus, self.instance = bus, instance

    async def put(self, stream_id: str, listener_id: str, targets: tuple[str, ...], translate_partials: bool) -> None:
        """Logged, not raised: a record not written costs translations, never the connection."""
        record = ListenerRecord(stream_id=stream_id, listener_id=listener_id, targets=targets,
                                translate_partials=translate_partials, edge=self.instance, updated_at=time.time())
        try:
            await listeners.put_listener(await self.bus.kv(listeners.BUCKET), record)
        except Exception as exc:
            log.warning("%s/%s: listener record not written: %s", stream_id, listener_id, exc)

    async def remove(self, stream_id: str, listener_id: str) -> None:
        with contextlib.suppress(Exception):
            await listeners.remove_listener(await self.bus.kv(listeners.BUCKET), stream_id, listener_id)


class Channels:
    """Broadcast channels as configured (`tolk_channels`) and whether an ingest runs them now (leases)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def get(self, name: str) -> ChannelRecord | None:
        try:
            entry = await (await self.bus.kv(channels.BUCKET)).get(name)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if not entry.value:
            return None
        try:
            return decode(entry.value, ChannelRecord)
        except DecodeError:
            return None

    async def names(self) -> list[str]:
        return await self.bus.kv_keys(channels.BUCKET)

    async def lease(self, name: str) -> IngestLease | None:
        with contextlib.suppress(Exception):
            entry = await (await self.bus.kv(channels.LEASES)).get(name)
            return decode(entry.value, IngestLease) if entry.value else None
        return None
