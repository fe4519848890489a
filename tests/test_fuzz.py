"""Fuzzing (hypothesis) of everything a stranger controls: WebSocket text and binary frames, start and
configure messages, base64 audio, and msgpack payloads on internal subjects. Thousands of malformed inputs:
the parsers answer with a protocol error (or DecodeError) and nothing else; a real edge keeps every
connection to a clear error or a normal reply and stays healthy for the next client."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NonInteractiveExampleWarning

from actors.runtime.bus import Bus
from edge.transports.native.codec import CLOSE_FOR, ProtocolError, check_audio, parse_text
from schemas import (
    ActorHeartbeat,
    AudioChunk,
    ChannelRecord,
    ClientResult,
    DecodeError,
    Encoding,
    IngestLease,
    ListenerRecord,
    Segment,
    SessionRecord,
    Transcript,
    decode,
)
from tests.conftest import edge_server

MAX = 1 << 20
SCHEMAS = (AudioChunk, Segment, Transcript, ClientResult, SessionRecord, ListenerRecord, ChannelRecord,
           IngestLease, ActorHeartbeat)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)
field_names = st.sampled_from(["type", "sample_rate", "encoding", "language", "session_id", "targets",
                               "translate_partials", "resume_from", "resume_token", "channel", "data",
                               "set_langs"])
message_types = st.sampled_from(["start", "audio", "stop", "configure", "set_langs", "subscribe", "unsubscribe",
                                 "", "START", "nope"])
messages = st.builds(
    lambda kind, extra: {"type": kind, **extra},
    message_types, st.dictionaries(field_names, json_values, max_size=6),
)


def assert_protocol_error_only(text: str) -> None:
    try:
        parse_text(text, MAX)
    except ProtocolError as err:
        assert err.code in CLOSE_FOR and err.message  # a known code and something to read
    # anything else escapes and fails the test


@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=300))
def test_any_text_frame(text: str) -> None:
    assert_protocol_error_only(text)


@settings(max_examples=3000, deadline=None)
@given(messages)
def test_any_json_message(obj: dict[str, Any]) -> None:
    assert_protocol_error_only(json.dumps(obj))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=512), st.sampled_from(list(Encoding)))
def test_any_binary_audio(data: bytes, encoding: Encoding) -> None:
    try:
        check_audio(data, encoding, MAX)
    except ProtocolError as err:
        assert err.code in CLOSE_FOR


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=8),
    max_leaves=25,
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True))),
       st.sampled_from(SCHEMAS))
def test_any_bytes_on_internal_subjects(data: bytes, typ: type) -> None:
    try:
        decode(data, typ)
    except DecodeError as err:
        assert typ.__name__ in str(err)


@pytest_asyncio.fixture(loop_scope="session")
async def edge_ws(bus: Bus) -> AsyncIterator[str]:
    async with edge_server(bus, idle_timeout_s=2.0) as url:
        yield url.replace("http", "ws", 1) + "/v1/listen"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_real_edge_answers_hundreds_of_hostile_connections(edge_ws: str) -> None:
    """Each connection sends one generated start-like message and a few frames; the edge must reply with
    JSON (an error with a code, or `started`) and close with a proper code, or keep the session going."""
    frames = st.lists(st.one_of(messages.map(json.dumps), st.text(max_size=80), st.binary(max_size=64)),
                      min_size=1, max_size=4)
    codes = set(CLOSE_FOR) | {"started", "configured", "subscribed", "unsubscribed"}
    with warnings.catch_warnings():  # drawing examples outside @given is the point here: one real socket each
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        examples = [frames.example() for _ in range(300)]
    async with aiohttp.ClientSession() as http:
        for batch in examples:
            async with http.ws_connect(edge_ws) as ws:
                for f in batch:
                    if ws.closed:
                        break
                    await (ws.send_bytes(f) if isinstance(f, bytes) else ws.send_str(f))
                await ws.send_json({"type": "stop"})
                replies: list[dict[str, Any]] = []
                while True:
                    try:
                        msg = await ws.receive(timeout=2 if any(r.get("type") == "started" for r in replies) else 10)
                    except TimeoutError:
                        # Only a session that really started may wait: its `done` needs the pipeline, which this
                        # edge-only test does not run.
                        assert any(r.get("type") == "started" for r in replies), (batch, replies)
                        break
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    replies.append(json.loads(msg.data))
                assert replies, batch
                if not ws.closed:
                    continue
                for r in replies:
                    assert r.get("code", r.get("type")) in codes or r.get("type") in ("partial", "final", "done"), r
                assert ws.close_code in {1000, 1003, 1007, 1008, 1009, 1011}, (ws.close_code, batch, replies)
        async with http.ws_connect(edge_ws) as ws:  # and the next ordinary client is served normally
            await ws.send_json({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"})
            assert (await ws.receive_json(timeout=10))["type"] == "started"


# ---------------------------------------------------------------- the HTTP routes: exports, page, tokens, uploads

SECRET = "fuzz-secret-of-at-least-thirty-two-bytes"
API_TOKEN = "fuzz-api-token"
ERROR_CODES = {"unauthorized", "invalid_token", "token_expired", "invalid_session_id", "invalid_request",
               "not_found", "file_too_large", "empty_file", "unsupported_media", "invalid_audio",
               "method_not_allowed", "request_too_large", "bad_request"}


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


claim_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.text(max_size=20),
                         st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(), max_size=2),
                         st.sampled_from(["nan", "inf", "-inf", "1e400", "9" * 40]))
headers_jwt = st.fixed_dictionaries({"alg": st.sampled_from(["HS256", "none", "None", "HS512", "RS256", "", "hs256"])},
                                    optional={"typ": st.sampled_from(["JWT", "", "jwt"]), "kid": st.text(max_size=8),
                                              "crit": st.lists(st.text(max_size=5), max_size=2)})
claims_jwt = st.dictionaries(st.sampled_from(["sub", "exp", "iat", "nbf", "aud", "iss"]), claim_values, max_size=5)


@st.composite
def crafted_tokens(draw: st.DrawFn) -> str:
    """JWT-shaped tokens with hostile headers and claims, some signed with the real secret (a buggy or
    compromised minting backend), some with another key or none; legacy `v1.` ones; and plain garbage."""
    import hashlib
    import hmac

    header = draw(headers_jwt)
    claims = draw(claims_jwt)
    kind = draw(st.sampled_from(["secret", "other", "unsigned", "v1", "garbage"]))
    if kind == "garbage":
        return draw(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=120))
    payload = _b64url(json.dumps(claims, allow_nan=True).encode())
    if kind == "v1":
        sig = hmac.new(SECRET.encode(), f"v1.{payload}".encode(), hashlib.sha256).digest()
        return f"v1.{payload}.{_b64url(sig)}"
    signing = f"{_b64url(json.dumps(header).encode())}.{payload}"
    key = {"secret": SECRET, "other": "not-the-secret"}.get(kind)
    sig = _b64url(hmac.new(key.encode(), signing.encode(), hashlib.sha256).digest()) if key else ""
    return f"{signing}.{sig}"


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crafted_tokens())
def test_crafted_signed_tokens_give_a_subject_or_a_token_error(token: str) -> None:
    """Nothing but a non-empty string subject from a finite, future `exp` and an HS256 signature by the secret
    is let in; everything else is a TokenError with its code, never another exception."""
    import math
    import time

    from edge.http.auth import TokenError, verify

    try:
        subject = verify(SECRET, token)
    except TokenError as err:
        assert err.code in ("invalid_token", "token_expired")
        return
    header = json.loads(base64_json(token.split(".")[0])) if not token.startswith("v1.") else {"alg": "HS256"}
    claims = json.loads(base64_json(token.split(".")[1]))
    assert header["alg"] == "HS256" and isinstance(subject, str) and subject
    exp = claims["exp"]
    assert not isinstance(exp, bool) and math.isfinite(float(exp)) and float(exp) > time.time(), claims


def base64_json(part: str) -> str:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


@pytest_asyncio.fixture(loop_scope="session")
async def edge_http(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    uploads = tmp_path_factory.mktemp("fuzz-uploads")
    async with edge_server(bus, api_tokens=API_TOKEN, token_secret=SECRET, max_upload_bytes=4096,
                           upload_dir=str(uploads)) as url:
        yield url


hostile_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["..", "../..", "%2e%2e", "%2e%2e%2f%2e%2e", "..%2f..%2fREADME.md", "%00", "a%00b", "ch=",
                     "ch=../x", "ch=%2f", "%ff%fe", "\u202e", "a" * 5000, "*", "{session_id}", "%", "%zz",
                     "index.html%3f", "js/../../app.py", "//etc/passwd", "..\\..\\app.py"]),
)


def _path_part(text: str) -> str:
    import urllib.parse

    return urllib.parse.quote(text, safe="%./\\=*{}")  # keep the traversal spellings raw, quote the rest


def _check_error(status: int, body: bytes, allowed: set[int]) -> None:
    assert status in allowed, (status, body[:200])
    payload = json.loads(body)
    assert payload["error"]["code"] in ERROR_CODES and payload["error"]["message"], payload


@pytest.mark.asyncio(loop_scope="session")
async def test_a_real_edge_answers_hostile_http_requests(edge_http: str) -> None:
    """Hundreds of generated requests at the routes added since the WebSocket fuzzing: transcript exports with
    hostile ids and formats, the page's static paths, crafted tokens, malformed and oversized multipart. Each
    gets a JSON error with a code and a 4xx (or the page's own 403/404), never a 5xx, never a file from outside
    the page's folder, and the edge stays healthy for an ordinary client."""
    from yarl import URL

    from edge.http import page

    outside = [f.read_bytes() for d in (page.STATIC.parent, page.STATIC.parent.parent) for f in d.iterdir()
               if f.is_file()]  # edge/app.py next to static/, the repository's README.md above
    good = {"Authorization": f"Bearer {API_TOKEN}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        exports = [(hostile_text.example(), st.one_of(hostile_text, st.sampled_from(["srt", "vtt", "json"])).example())
                   for _ in range(150)]
        statics = [hostile_text.example() for _ in range(150)]
        tokens = [crafted_tokens().example() for _ in range(150)]
        bodies = [st.binary(max_size=600).example() for _ in range(60)]
        boundaries = [st.text(alphabet="abcXYZ-_'\" ;=", max_size=30).example() for _ in range(60)]
    async with aiohttp.ClientSession() as http:
        for sid, fmt in exports:
            url = URL(f"{edge_http}/v1/sessions/{_path_part(sid)}/transcript?format={_path_part(fmt)}", encoded=True)
            async with http.get(url, headers=good) as resp:
                if len(url.raw_path_qs) > 8000:  # over the HTTP parser's line limit: refused before any route
                    assert resp.status == 400, resp.status
                    continue
                _check_error(resp.status, await resp.read(), {400, 404})
        for path in statics:
            url = URL(f"{edge_http}/static/{_path_part(path)}", encoded=True)
            async with http.get(url) as resp:
                body = await resp.read()
                if len(url.raw_path_qs) > 8000:
                    assert resp.status == 400, resp.status
                    continue
                assert resp.status in (200, 400, 403, 404), (path, resp.status)
                if resp.status == 200:  # only a file of the page's folder, with the page's headers
                    assert "Content-Security-Policy" in resp.headers, path
                    assert body not in outside, path
        for token in tokens:
            async with http.get(f"{edge_http}/v1/channels", headers={"Authorization": f"Bearer {token}"}) as resp:
                body = await resp.read()
                if resp.status != 200:
                    _check_error(resp.status, body, {401})
            async with http.get(f"{edge_http}/v1/channels", params={"token": token}) as resp:
                assert resp.status in (200, 401), resp.status
        for i, body in enumerate(bodies):
            boundary = boundaries[i]
            encoding = ["base64", "quoted-printable", "x-bogus", "binary"][i % 4]
            framed = body if i % 3 == 0 else (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{"file" if i % 2 else "x"}"; '
                f'filename="a.wav"\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n'.encode()
                + body + (f"\r\n--{boundary}--\r\n".encode() if i % 5 else b""))
            ctype = f"multipart/form-data; boundary={boundary}" if i % 7 else "multipart/form-data"
            for route in ("/v1/transcriptions", "/v1/audio/transcriptions"):
                async with http.post(f"{edge_http}{route}", data=framed,
                                     headers={**good, "Content-Type": ctype}) as resp:
                    got = await resp.read()
                    assert resp.status < 500, (route, resp.status, got[:200], framed[:200])
                    assert resp.status >= 400 and json.loads(got)["error"]["message"], (route, got[:200])
        big = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n" + b"\0" * 10_000
        async with http.post(f"{edge_http}/v1/transcriptions", data=big,
                             headers={**good, "Content-Type": "multipart/form-data; boundary=b"}) as resp:
            _check_error(resp.status, await resp.read(), {413})
        async with http.get(f"{edge_http}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{edge_http}/v1/channels", headers=good) as resp:
            assert resp.status == 200 and "channels" in await resp.json()
