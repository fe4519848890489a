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
from edge.protocol import CLOSE_FOR, ProtocolError, check_audio, parse_text
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
