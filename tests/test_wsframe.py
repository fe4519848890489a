"""Frames the channel hub builds once and writes straight to many sockets, read by a real WebSocket client."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from edge.transports.native.hub import BINARY, TEXT, ws_frame
from tests.conftest import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

PAYLOADS = [(TEXT, b"a" * 10), (TEXT, ("\u00e9" * 200).encode()), (BINARY, b"\x00\x01" * 35000), (TEXT, b"")]


async def test_prebuilt_frames_reach_a_real_client() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert request.transport is not None
        for opcode, payload in PAYLOADS:
            request.transport.write(ws_frame(payload, opcode))
        await ws.send_str("via aiohttp")  # interleaves cleanly with aiohttp's own writer
        await ws.close()
        return ws

    app = web.Application()
    app.add_routes([web.get("/", handler)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        got = []
        async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/") as ws:
            async for msg in ws:
                got.append((msg.type, msg.data))
    finally:
        await runner.cleanup()
    assert got == [(aiohttp.WSMsgType.TEXT, "a" * 10), (aiohttp.WSMsgType.TEXT, "\u00e9" * 200),
                   (aiohttp.WSMsgType.BINARY, b"\x00\x01" * 35000), (aiohttp.WSMsgType.TEXT, ""),
                   (aiohttp.WSMsgType.TEXT, "via aiohttp")]
