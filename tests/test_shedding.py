"""Load shedding at `start`: a session limit and STT's backlog refuse new sessions with 1013 `overloaded`,
on a real edge app and a real NATS (the backlog is real: segments waiting on the stt-final-<pool> consumer of
the new session's STT pool)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from actors.runtime import pools, topology
from actors.runtime.actor import HEARTBEAT_BUCKET
from actors.runtime.bus import Bus
from actors.runtime.partition import partition_for
from edge.core.heartbeats import Heartbeats
from schemas import ActorHeartbeat, AudioChunk, ClientResult, ResultKind, Segment, SegmentKind, decode, encode
from tests.conftest import edge_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

START = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"}
BACKLOG = pools.subject("final", pools.load().route("en").name, 0, "shed-backlog")  # the pool English goes to


@pytest_asyncio.fixture(loop_scope="session")
async def edge_url(bus: Bus) -> AsyncIterator[str]:
    try:
        async with edge_server(bus, max_sessions=1, shed_backlog=5) as url:
            yield url.replace("http", "ws", 1) + "/v1/listen"
    finally:
        await bus.js.purge_stream("TOLK_SEGMENTS", subject=BACKLOG)


async def first_reply(ws: aiohttp.ClientWebSocketResponse, start: dict[str, Any]) -> dict[str, Any]:
    await ws.send_json(start)
    return dict(await ws.receive_json(timeout=10))


async def test_session_limit_then_stt_backlog_shed_new_sessions(edge_url: str, bus: Bus) -> None:
    async with aiohttp.ClientSession() as http:
        a = await http.ws_connect(edge_url)
        started = await first_reply(a, {**START, "session_id": "shed-a"})
        assert started["type"] == "started"
        async with http.ws_connect(edge_url) as b:
            err = await first_reply(b, START)
            assert err["code"] == "overloaded" and "limit of 1" in err["message"]
            await b.receive()
            assert b.close_code == 1013
        await a.close()
        await asyncio.sleep(0.3)

        for i in range(10):  # finals waiting for an STT replica that is not there
            seg = Segment(session_id="shed-backlog", utterance_id=i, seq=i + 1, final_index=i + 1,
                          kind=SegmentKind.FINAL, audio=bytes(3200), start=i, end=i + 0.1, language="en",
                          speech_end_wall=0.0, partition=0)
            await bus.js.publish(BACKLOG, encode(seg))
        await asyncio.sleep(2.1)  # the edge reads the backlog at most every 2 s
        async with http.ws_connect(edge_url) as c:
            err = await first_reply(c, START)
            assert err["code"] == "overloaded" and "behind" in err["message"]
            await c.receive()
            assert c.close_code == 1013
        async with http.ws_connect(edge_url) as d:  # a resume is a session already admitted: never shed
            reply = await first_reply(d, {**START, "session_id": "shed-a", "resume_from": 0,
                                          "resume_token": started["resume_token"]})
            assert reply["type"] == "started" and reply["resumed"] is True


async def test_session_length_limit_flushes_then_closes_1008(bus: Bus) -> None:
    """At TOLK_MAX_SESSION_S the client is told, the pipeline is asked to flush (END on the session's audio
    subject), what it still sends arrives, then `done` and a 1008 close. Fan-out is played by the test."""
    sid = "too-long"
    subject = f"tolk.audio.{partition_for(sid, topology.load().partitions)}.{sid}"
    sub = await bus.nc.subscribe(subject)  # core NATS sees the JetStream publishes too
    try:
        async with edge_server(bus, max_session_s=1.0) as url, aiohttp.ClientSession() as http, \
                http.ws_connect(url.replace("http", "ws", 1) + "/v1/listen") as ws:
            assert (await first_reply(ws, {**START, "session_id": sid}))["type"] == "started"
            await ws.send_bytes(bytes(3200))
            await asyncio.sleep(1.2)
            await ws.send_bytes(bytes(3200))  # past the limit: not forwarded
            err = await ws.receive_json(timeout=5)
            assert err["type"] == "error" and err["code"] == "session_too_long", err
            chunks = [decode((await sub.next_msg(timeout=5)).data, AudioChunk) for _ in range(2)]
            assert [c.end for c in chunks] == [False, True] and len(chunks[0].data) == 3200
            out = f"tolk.session.{sid}.out"
            await bus.nc.publish(out, encode(ClientResult(session_id=sid, utterance_id=0, seq=1,
                                                          kind=ResultKind.FINAL, text="the last words")))
            await bus.nc.publish(out, encode(ClientResult(session_id=sid, utterance_id=0, seq=2,
                                                          kind=ResultKind.END)))
            final = await ws.receive_json(timeout=5)
            assert final["type"] == "final" and final["text"] == "the last words"
            assert (await ws.receive_json(timeout=5))["type"] == "done"
            closing = await ws.receive(timeout=5)
            assert closing.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
            assert closing.extra == "session_too_long"
    finally:
        await sub.unsubscribe()
        await bus.js.purge_stream("TOLK_AUDIO", subject=subject)


async def test_measured_capacity_refuses_the_session_that_would_overload_the_pool(bus: Bus) -> None:
    """#38: admission from the STT pool's measured capacity (what its replicas announce in their heartbeats:
    actors/stt/load.py), not a fixed count. At 0.25 of the lane per session and a 0.8 limit, three sessions fit and
    the fourth is refused `overloaded` (1013) up front; once one leaves, a new one fits again; a pool busy with
    other edges' sessions refuses even the first."""
    kv = await bus.kv(HEARTBEAT_BUCKET)
    pool = pools.load().route("en")
    key = "stt.capacity-test"

    async def announce(busy: float, cost: float) -> None:
        beat = ActorHeartbeat(actor="stt", instance="capacity-test", pid=1, started_at=0.0, ready=True,
                              info={"pool": pool.name, "model": pool.model, "languages": "en",
                                    "final_busy": f"{busy:.3f}", "final_sessions": "2", "session_cost": f"{cost:.4f}"})
        await kv.put(key, encode(beat))
        await asyncio.sleep(2.1)  # the edge re-reads heartbeats at most every 2 s

    await announce(0.1, 0.25)
    try:
        async with edge_server(bus, admit_final_busy=0.8, shed_backlog=0) as url, aiohttp.ClientSession() as http:
            ws_url = url.replace("http", "ws", 1) + "/v1/listen"
            admitted = []
            for i in range(3):
                ws = await http.ws_connect(ws_url)
                assert (await first_reply(ws, {**START, "session_id": f"cap-{i}"}))["type"] == "started"
                admitted.append(ws)
            async with http.ws_connect(ws_url) as extra:
                err = await first_reply(extra, START)
                assert err["code"] == "overloaded" and "measured capacity" in err["message"], err
                await extra.receive()
                assert extra.close_code == 1013
            await admitted.pop().close()
            await asyncio.sleep(0.3)
            async with http.ws_connect(ws_url) as again:
                assert (await first_reply(again, {**START, "session_id": "cap-again"}))["type"] == "started"
            for ws in admitted:
                await ws.close()
            await asyncio.sleep(0.3)
            await announce(0.9, 0.25)  # the pool is busy with sessions this edge does not hold
            async with http.ws_connect(ws_url) as busy:
                err = await first_reply(busy, START)
                assert err["code"] == "overloaded" and "90% busy" in err["message"], err
    finally:
        await kv.delete(key)


async def test_a_start_judges_one_heartbeat_read(bus: Bus) -> None:
    """A start's translation check and admission read the heartbeats through one `once()` view of the edge's cache:
    both see the same read, made once, however often the cache itself re-reads meanwhile."""
    beats = Heartbeats(bus, ttl_s=0.0)  # a cache that re-reads on every call
    assert await beats.read() is not await beats.read()
    once = beats.once()
    first = await once.read()
    assert await once.read() is first
