"""Channel hub: one NATS subscription per channel per edge process, fanned out in memory.

Two thousand listeners of one channel on one edge cost two subscriptions (results and audio), one
msgpack decode per result, and one `put_nowait` per listener: a slow listener can never stall the
subscription or the others (it is closed instead; see `ChannelListener.offer`).
"""

from __future__ import annotations

import logging
from typing import Protocol

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors.runtime import channels
from actors.runtime.bus import Bus
from schemas import ClientResult, DecodeError, decode

log = logging.getLogger("tolk.edge.hub")


class Member(Protocol):
    def offer_result(self, result: ClientResult) -> None: ...

    def offer_audio(self, frame: bytes) -> None: ...


class _Channel:
    def __init__(self) -> None:
        self.members: set[Member] = set()
        self.subs: list[Subscription] = []


class ChannelHub:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._channels: dict[str, _Channel] = {}

    def listeners(self, name: str) -> int:
        ch = self._channels.get(name)
        return len(ch.members) if ch else 0

    def active(self) -> list[str]:
        return [name for name, ch in self._channels.items() if ch.members]

    async def join(self, name: str, member: Member) -> None:
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = _Channel()

            async def on_result(msg: Msg) -> None:
                try:
                    result = decode(msg.data, ClientResult)
                except DecodeError as exc:
                    log.error("%s: undecodable result dropped: %s", name, exc)
                    return
                for m in list(ch.members):
                    m.offer_result(result)

            async def on_audio(msg: Msg) -> None:
                for m in list(ch.members):
                    m.offer_audio(msg.data)

            stream = channels.stream_id(name)
            ch.subs = [
                await self.bus.nc.subscribe(f"tolk.session.{stream}.out", cb=on_result, pending_msgs_limit=65536),
                await self.bus.nc.subscribe(channels.audio_subject(name), cb=on_audio, pending_msgs_limit=65536),
            ]
        ch.members.add(member)

    async def leave(self, name: str, member: Member) -> None:
        ch = self._channels.get(name)
        if ch is None:
            return
        ch.members.discard(member)
        if not ch.members:
            del self._channels[name]
            for sub in ch.subs:
                try:
                    await sub.unsubscribe()
                except Exception as exc:  # connection closing: nothing to undo
                    log.debug("unsubscribe %s: %s", name, exc)
