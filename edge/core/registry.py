"""Who is connected to this edge: live sessions by id and channel listeners, and whether new ones are welcome.

Connections of every API register here, so shutdown, metrics, per-token limits and record refreshes see them all
without knowing any wire format: each is a `Connection` (announce its listener record, be told to go).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Protocol

from actors.runtime import listeners
from edge.core.errors import ErrorCode, ProtocolError
from schemas import ChannelRecord


class Connection(Protocol):
    async def announce(self) -> None:
        """Re-writes its listener record (records expire unless refreshed)."""

    async def kill(self, err: ProtocolError) -> None:
        """Reports `err` to the client in its API's shape, and closes the connection where the code says so."""


class Session(Connection, Protocol):
    session_id: str
    token: str

    @property
    def language(self) -> str | None: ...

    @property
    def channels(self) -> int:
        """Pipelines it runs: one per audio channel of a multichannel session."""
        ...


class Listener(Connection, Protocol):
    channel: ChannelRecord | None


class Registry:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.listeners: set[Listener] = set()
        self.accepting = True
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()

    def register(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self._no_sessions.clear()

    def unregister(self, session: Session) -> None:
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
        if not self.sessions:
            self._no_sessions.set()

    def per_token(self, token: str) -> int:
        return sum(1 for s in self.sessions.values() if s.token == token)

    def listening(self, channel: str) -> int:
        """Listeners of `channel` on this edge."""
        return sum(1 for x in self.listeners if x.channel is not None and x.channel.name == channel)

    def connections(self) -> Iterable[Connection]:
        return [*self.sessions.values(), *self.listeners]

    async def refresh_forever(self) -> None:
        """Keeps live connections' listener records from expiring; a dead edge's records expire by TTL."""
        while True:
            await asyncio.sleep(listeners.REFRESH_S)
            for connection in self.connections():
                await connection.announce()

    async def drain(self, grace_s: float) -> None:
        """Refuse new sessions, give open ones a short grace, then tell the rest to reconnect."""
        self.accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_sessions.wait(), grace_s)
        for connection in self.connections():
            await connection.kill(ProtocolError(ErrorCode.SHUTTING_DOWN, "server restarting; reconnect"))
