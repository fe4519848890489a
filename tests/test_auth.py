"""Edge API tokens: a real edge app on a real NATS, checked over real HTTP and WebSocket handshakes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from actors.runtime.bus import Bus
from edge.app import EdgeSettings
from edge.auth import token_ok
from tests.conftest import edge_server

on_loop = pytest.mark.asyncio(loop_scope="session")

TOKENS = "alpha-token-1, beta-token-2"


@pytest_asyncio.fixture(loop_scope="session")
async def server(bus: Bus) -> AsyncIterator[str]:
    async with edge_server(bus, api_tokens=TOKENS, max_sessions_per_token=1) as url:
        yield url


@on_loop
async def test_http_routes_need_a_valid_token(server: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server}/v1/channels") as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await resp.json())["error"]["code"] == "unauthorized"
        async with http.get(f"{server}/v1/channels", headers={"Authorization": "Bearer alpha-token-X"}) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_token"
        async with http.post(f"{server}/v1/transcriptions", data=b"x") as resp:
            assert resp.status == 401  # refused before a byte of the upload is stored
        async with http.get(f"{server}/v1/channels", headers={"Authorization": "Bearer beta-token-2"}) as resp:
            assert resp.status == 200
        async with http.get(f"{server}/v1/channels?token=alpha-token-1") as resp:
            assert resp.status == 200
        for path in ("/healthz", "/metrics"):  # probes and scrapes stay open
            async with http.get(f"{server}{path}") as resp:
                assert resp.status == 200
        async with http.get(f"{server}/metrics") as resp:
            assert 'tolk_client_errors_total' in await resp.text()


@on_loop
async def test_websocket_handshake_needs_a_token(server: str) -> None:
    ws_url = server.replace("http", "ws", 1) + "/v1/listen"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(ws_url)
        assert err.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(ws_url + "?token=nope")
        async with http.ws_connect(ws_url + "?token=alpha-token-1") as ws:
            await ws.send_json({"type": "bogus"})
            reply = await ws.receive_json(timeout=10)
            assert reply["type"] == "error"  # through the door: now the protocol answers
        start = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"}
        async with http.ws_connect(ws_url, headers={"Authorization": "Bearer beta-token-2"}) as ws:
            await ws.send_json(start)
            assert (await ws.receive_json(timeout=10))["type"] == "started"
            async with http.ws_connect(ws_url + "?token=beta-token-2") as second:  # one session per token
                await second.send_json(start)
                err = await second.receive_json(timeout=10)
                assert err["code"] == "too_many_sessions"
                await second.receive()
                assert second.close_code == 1008
            async with http.ws_connect(ws_url + "?token=alpha-token-1") as other:  # another token is not affected
                await other.send_json(start)
                assert (await other.receive_json(timeout=10))["type"] == "started"


def test_token_comparison() -> None:
    tokens = (b"alpha", b"beta")
    assert token_ok("beta", tokens) and not token_ok("bet", tokens) and not token_ok("", tokens)
    assert not token_ok("alpha", ())
    assert "alpha" not in repr(EdgeSettings(api_tokens="alpha"))
