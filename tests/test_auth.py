"""Edge API tokens: a real edge app on a real NATS, checked over real HTTP and WebSocket handshakes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from actors.runtime.bus import Bus
from edge.http.auth import TokenError, mint, mint_v1, token_ok, verify
from edge.settings import EdgeSettings
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


SECRET = "signing-secret-for-tests"


@pytest_asyncio.fixture(loop_scope="session")
async def signed_server(bus: Bus) -> AsyncIterator[str]:
    async with edge_server(bus, token_secret=SECRET, max_sessions_per_token=1) as url:
        yield url


def cli_token(subject: str) -> str:
    """`tolk token`, the way a backend would mint one."""
    cli = subprocess.run([str(Path(sys.executable).parent / "tolk"), "token", "--subject", subject, "--ttl", "60"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "TOLK_TOKEN_SECRET": SECRET},
                         check=True)
    return cli.stdout.strip()


@on_loop
async def test_signed_expiring_tokens(signed_server: str) -> None:
    good = cli_token("phone-7")
    expired = mint(SECRET, "phone-7", ttl_s=-1)
    forged = mint("another-secret", "phone-7", ttl_s=60)
    tampered = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{signed_server}/v1/channels?token={good}") as resp:
            assert resp.status == 200
        for token, code in ((expired, "token_expired"), (forged, "invalid_token"), (tampered, "invalid_token"),
                            ("v1.e30.", "invalid_token"), ("plain-key", "invalid_token")):
            async with http.get(f"{signed_server}/v1/channels", headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 401 and (await resp.json())["error"]["code"] == code, token
        # Limits count per subject: a second token for the same subject shares the first one's allowance.
        start = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"}
        ws_url = signed_server.replace("http", "ws", 1) + "/v1/listen"
        async with http.ws_connect(f"{ws_url}?token={good}") as ws:
            await ws.send_json(start)
            assert (await ws.receive_json(timeout=10))["type"] == "started"
            async with http.ws_connect(f"{ws_url}?token={mint(SECRET, 'phone-7', 60)}") as again:
                await again.send_json(start)
                assert (await again.receive_json(timeout=10))["code"] == "too_many_sessions"


def test_token_verification_rules() -> None:
    token = mint(SECRET, "alice", ttl_s=10, now=1000)
    assert verify(SECRET, token, now=1005) == "alice"
    with pytest.raises(TokenError) as err:
        verify(SECRET, token, now=1011)
    assert err.value.code == "token_expired"
    with pytest.raises(TokenError):
        verify("wrong", token, now=1005)


def test_tokens_are_standard_jwts() -> None:
    """Any backend's JWT library mints them (HS256, `sub`, `exp`); the pre-JWT `v1.` format still verifies for
    this release; `alg: none`, other algorithms and tokens without `sub` / `exp` do not."""
    import jwt

    token = mint(SECRET, "alice", ttl_s=60)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] > claims["iat"]
    by_backend = jwt.encode({"sub": "bob", "exp": 2000}, SECRET, algorithm="HS256")
    assert verify(SECRET, by_backend, now=1999) == "bob"
    assert verify(SECRET, mint_v1(SECRET, "carol", 10, now=1000), now=1005) == "carol"
    unsigned = jwt.encode({"sub": "mallory", "exp": 2000}, None, algorithm="none")
    other_alg = jwt.encode({"sub": "mallory", "exp": 2000}, SECRET, algorithm="HS512")
    no_exp = jwt.encode({"sub": "mallory"}, SECRET, algorithm="HS256")
    no_sub = jwt.encode({"exp": 2000}, SECRET, algorithm="HS256")
    for bad in (unsigned, other_alg, no_exp, no_sub, by_backend + "x", "eyJ.eyJ.x"):
        with pytest.raises(TokenError) as err:
            verify(SECRET, bad, now=1000)
        assert err.value.code == "invalid_token", bad


@on_loop
async def test_vendor_api_keys_are_tolk_tokens(signed_server: str) -> None:
    """OpenAI's SDK sends its key as Bearer, Deepgram's as `Token`: both are Tolk tokens (here JWTs), and a
    refusal comes in that vendor's error shape."""
    good = mint(SECRET, "app-7", ttl_s=60)
    async with aiohttp.ClientSession() as http:
        for key, status in (("wrong", 401), (good, 400)):
            form = aiohttp.FormData()  # no `model`: past authentication, OpenAI's 400
            form.add_field("file", b"RIFF0000WAVE", filename="a.wav")
            async with http.post(f"{signed_server}/v1/audio/transcriptions", data=form,
                                 headers={"Authorization": f"Bearer {key}"}) as resp:
                body = (await resp.json())["error"]
            assert resp.status == status and set(body) >= {"message", "type", "param", "code"}, body
            assert body["code"] == ("invalid_api_key" if status == 401 else "missing_required_parameter"), body
        for key, status in (("wrong", 401), (good, 400)):  # Deepgram pre-recorded: JSON `url` bodies are refused
            async with http.post(f"{signed_server}/v1/listen?model=nova-3", json={"url": "https://example.com/a.wav"},
                                 headers={"Authorization": f"Token {key}"}) as resp:
                body = await resp.json()
            assert resp.status == status and set(body) == {"err_code", "err_msg", "request_id"}, body

