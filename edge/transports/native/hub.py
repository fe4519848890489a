"""Channel hub: one NATS subscription per channel per edge process, fanned out in memory.

Two thousand listeners of one channel on one edge cost two subscriptions (results and audio), one
msgpack decode and one JSON rendering per result (per target set), and one socket write per listener per
loop turn: what arrives for a channel in one turn (an audio frame and a caption, say) is framed, joined
once per target set and written with one send, since the send system call is most of the cost. A
slow listener can never stall the subscription or the others: it gets a queue of its own, loses audio
and partials first, and is closed rather than lose a final (see `ChannelListener.deliver_result`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from typing import Protocol, TypeAlias

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors.runtime import backoff, channels
from actors.runtime.bus import Bus
from edge.core import replay
from edge.core.pipeline import Pipeline
from edge.transports.native.codec import render_result
from schemas import ClientResult, ResultKind, stream_of

log = logging.getLogger("tolk.edge.hub")


Audio: TypeAlias = tuple[bytes, bytes]  # (payload, the same framed as a WebSocket binary message)
Item: TypeAlias = ClientResult | Audio


class Member(Protocol):
    def deliver(self, items: list[Item], joined: dict[object, bytes], direct: bool) -> None:
        """Everything that arrived for the channel in one loop turn, in order. `joined` caches the batch
        joined into one buffer per target set, shared by the members of this turn; `direct` is False when
        a batch holds something that must take the queued path (an END)."""


def ws_frame(payload: bytes, opcode: int) -> bytes:
    """One unfragmented, unmasked WebSocket frame (RFC 6455 §5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


TEXT, BINARY = 0x1, 0x2
HISTORY = 50  # = TOLK_CAPTIONS max_msgs_per_subject: what a joining listener is replayed


class _Channel:
    def __init__(self) -> None:
        self.members: set[Member] = set()
        self.subs: list[Subscription] = []
        self.pending: list[Item] = []
        self.flush_scheduled = False


class ChannelHub:
    def __init__(self, bus: Bus, pipeline: Pipeline) -> None:
        self.bus, self.pipeline = bus, pipeline
        self._channels: dict[str, _Channel] = {}
        self._history = replay.SharedReads(self._read_history)
        self._rendered: OrderedDict[tuple[str, int, str, tuple[str, ...], bool], str] = OrderedDict()
        self._framed: OrderedDict[tuple[str, int, str, tuple[str, ...], bool], bytes] = OrderedDict()

    def framed(self, result: ClientResult, targets: tuple[str, ...], replay: bool) -> bytes:
        key = (result.session_id, result.seq, result.kind.value, targets, replay)
        frame = self._framed.get(key)
        if frame is None:
            frame = self._framed[key] = ws_frame(self.rendered(result, targets, replay).encode(), TEXT)
            while len(self._framed) > 512:
                self._framed.popitem(last=False)
        return frame

    def rendered(self, result: ClientResult, targets: tuple[str, ...], replay: bool) -> str:
        """The JSON text a listener gets: serialised once per result and target set, not once per listener."""
        key = (result.session_id, result.seq, result.kind.value, targets, replay)
        text = self._rendered.get(key)
        if text is None:
            out = render_result(result, targets=targets)
            out["channel"] = (stream_of(result) or "")[3:] or None
            if replay:
                out["replay"] = True
            text = self._rendered[key] = json.dumps(out, ensure_ascii=False)
            while len(self._rendered) > 512:
                self._rendered.popitem(last=False)
        return text

    def listeners(self, name: str) -> int:
        ch = self._channels.get(name)
        return len(ch.members) if ch else 0

    def active(self) -> list[str]:
        return [name for name, ch in self._channels.items() if ch.members]

    async def history(self, name: str) -> list[ClientResult]:
        """The channel's last finals (TOLK_CAPTIONS keeps HISTORY per channel), as stored when asked: reads
        of many listeners joining at once are shared (replay.SharedReads); a failed read is retried."""
        for attempt in range(3):
            try:
                return await self._history.get(name)
            except Exception as exc:
                log.warning("%s: history read failed (%s)%s", name, exc, "; retrying" if attempt < 2 else "")
                if attempt < 2:
                    await asyncio.sleep(backoff.delay(attempt, 0.5, 2.0))
        return []

    async def _read_history(self, name: str) -> list[ClientResult]:
        subject = channels.captions_subject(channels.stream_id(name))
        return (await replay.read_all(self.bus, subject, "TOLK_CAPTIONS", ClientResult, HISTORY))[-HISTORY:]

    async def join(self, name: str, member: Member) -> None:
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = _Channel()

            def on_result(result: ClientResult) -> None:
                self._add(ch, result)

            async def on_audio(msg: Msg) -> None:
                self._add(ch, (msg.data, ws_frame(msg.data, BINARY)))

            stream = channels.stream_id(name)
            ch.subs = [
                await self.pipeline.results(stream, on_result),
                await self.bus.nc.subscribe(channels.audio_subject(name), cb=on_audio, pending_msgs_limit=65536),
            ]
        ch.members.add(member)

    def _add(self, ch: _Channel, item: Item) -> None:
        ch.pending.append(item)
        if not ch.flush_scheduled:
            ch.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, ch)

    def _flush(self, ch: _Channel) -> None:
        ch.flush_scheduled = False
        items, ch.pending = ch.pending, []
        direct = not any(isinstance(i, ClientResult) and i.kind is ResultKind.END for i in items)
        joined: dict[object, bytes] = {}
        for m in list(ch.members):
            m.deliver(items, joined, direct)  # never waits on a slow listener: see ChannelListener.deliver

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
