"""Following a broadcast channel: captions (and its relayed audio) for as long as you like.

A dropped connection is re-subscribed with `after` = the last final received (docs/channels.md#listening), so
the server replays only what was missed: nothing is lost in a short outage and nothing arrives twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import aiohttp

from tolk_client import _net
from tolk_client.results import AudioFrame, Result, TolkError

log = logging.getLogger("tolk_client.channel")
FATAL = frozenset({"unknown_channel", "invalid_subscribe", "unauthorized", "invalid_token", "token_expired"})


class ChannelListener:
    """`async with subscribe(url, "news", targets=["de"]) as ch: async for item in ch:` — Results, and
    AudioFrames when `audio=True`. `replayed` finals (the channel's history) come first, marked `replay`."""

    def __init__(self, url: str, channel: str, *, targets: Sequence[str] | None = None,
                 translate_partials: bool = False, audio: bool = False, token: str | None = None,
                 reconnect: bool = True) -> None:
        self.url = _net.ws_url(url)
        self.channel = channel
        self.targets = list(targets) if targets is not None else None
        self.translate_partials = translate_partials
        self.audio = audio
        self.token = token
        self.reconnect = reconnect
        self.subscribed: dict[str, Any] = {}  # the server's `subscribed` answer (title, language, targets, …)
        self.reconnects = 0
        self.last_final: tuple[str, int] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closing = False

    async def __aenter__(self) -> ChannelListener:
        self._http = aiohttp.ClientSession(headers=_net.headers(self.token))
        return self

    async def __aexit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.send_json({"type": "unsubscribe"})
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    async def configure(self, targets: Sequence[str]) -> None:
        self.targets = list(targets)
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_json({"type": "configure", "targets": self.targets})

    def __aiter__(self) -> AsyncIterator[Result | AudioFrame]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Result | AudioFrame]:
        attempt = 0
        while not self._closing:
            try:
                async for item in self._connection():
                    attempt = 0
                    yield item
            except (aiohttp.ClientError, ConnectionError, OSError, TimeoutError) as exc:
                log.info("%s: connection failed: %s", self.channel, exc)
            if self._closing or not self.reconnect:
                return
            self.reconnects += 1
            await asyncio.sleep(_net.retry_delay(attempt))
            attempt += 1

    async def _connection(self) -> AsyncIterator[Result | AudioFrame]:
        assert self._http is not None, "use `async with subscribe(...)`"
        self._ws = ws = await self._http.ws_connect(self.url, heartbeat=15.0, max_msg_size=0)
        msg: dict[str, Any] = {"type": "subscribe", "channel": self.channel,
                               "translate_partials": self.translate_partials}
        if self.targets is not None:
            msg["targets"] = self.targets
        if self.last_final:
            msg["after"] = {"session_id": self.last_final[0], "seq": self.last_final[1]}
        await ws.send_json(msg)
        async for m in ws:
            if m.type == aiohttp.WSMsgType.BINARY:
                if self.audio and len(m.data) > 8:
                    yield AudioFrame(struct.unpack("<d", m.data[:8])[0], bytes(m.data[8:]))
                continue
            if m.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(m.data)
            kind = data.get("type")
            if kind in ("partial", "final"):
                r = Result.from_json(data)
                if r.is_final and r.text:
                    self.last_final = (r.session_id, r.seq)
                yield r
            elif kind == "subscribed":
                self.subscribed = data
            elif kind == "error":
                err = TolkError.from_json(data)
                if err.code in FATAL:
                    self._closing = True
                    raise err
                log.warning("%s: %s", self.channel, err)


def subscribe(url: str, channel: str, **options: Any) -> ChannelListener:
    return ChannelListener(url, channel, **options)
