"""Edge TLS: a real edge serving HTTPS and WSS with a certificate made by openssl for the test."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest

from actors.runtime import settings, topology
from actors.runtime.actor import RuntimeSettings
from actors.runtime.bus import Bus
from edge.app import Edge
from edge.settings import EdgeSettings, tls_context
from tests.conftest import free_port


def make_cert(tmp: Path) -> tuple[str, str]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


@pytest.mark.asyncio(loop_scope="session")
async def test_edge_serves_https_and_wss(bus: Bus, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    port = free_port()
    edge = Edge(bus, settings.load(RuntimeSettings, env={}),
                settings.load(EdgeSettings, env={}, port=port, tls_cert=cert, tls_key=key), topology.load())
    await edge.start()
    trust = ssl.create_default_context(cafile=cert)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=trust) as resp:
                assert resp.status == 200
            async with http.ws_connect(f"wss://127.0.0.1:{port}/v1/listen", ssl=trust) as ws:
                await ws.send_json({"type": "bogus"})
                assert (await ws.receive_json(timeout=10))["code"] == "invalid_start"
            with pytest.raises(aiohttp.ClientError):  # plain HTTP to a TLS port gets nothing
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    await resp.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # and an untrusted client refuses it
                async with http.get(f"https://127.0.0.1:{port}/healthz") as resp:
                    await resp.read()
    finally:
        await edge.close()


def test_half_or_broken_tls_config_stops_the_edge(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    assert tls_context("", "") is None
    assert tls_context(cert, key) is not None
    for c, k in ((cert, ""), ("", key), (cert, str(tmp_path / "missing.pem")), (key, cert)):
        with pytest.raises(SystemExit, match="edge:"):
            tls_context(c, k)
