"""Resume: a client that reconnects with its session_id and last seq gets every missed final once, in order,
then live results; across a dropped connection, a takeover, and a killed-and-restarted edge process."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from edge.core.replay import missed
from edge.transports.native.codec import ErrorCode, ProtocolError, parse_start
from loadtest.speech import clips
from loadtest.wer import corpus_wer
from schemas import ResultKind, Transcript
from tests.conftest import Running, start_tolk, stop_tolk

on_loop = pytest.mark.asyncio(loop_scope="session")

RATE = 16000
CHUNK = RATE * 2 // 10  # 100 ms of s16le


class Client:
    """One connection of a session: sends audio, collects what comes back."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(msg.data))

    @property
    def results(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] in ("partial", "final")]

    async def send(self, pcm: bytes, pace: float = 4.0) -> None:
        for off in range(0, len(pcm), CHUNK):
            await self.ws.send_bytes(pcm[off : off + CHUNK])
            await asyncio.sleep(0.1 / pace)


async def connect(http: aiohttp.ClientSession, url: str, start: dict[str, Any], tries: int = 1) -> Client:
    for attempt in range(tries):
        try:
            ws = await http.ws_connect(url)
            break
        except aiohttp.ClientError:
            if attempt == tries - 1:
                raise
            await asyncio.sleep(0.5)
    await ws.send_json({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "language": "en", **start})
    client = Client(ws)
    for _ in range(100):
        if client.messages:
            break
        await asyncio.sleep(0.1)
    return client


def jfk() -> tuple[bytes, str]:
    clip = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    pcm, rate = clip.pcm16()
    assert rate == RATE
    return pcm, clip.reference


def stored_finals(http_base: str, sid: str) -> list[str]:
    with urllib.request.urlopen(f"{http_base}/v1/sessions/{sid}/transcript?format=verbose_json", timeout=30) as resp:
        return [seg["text"] for seg in json.loads(resp.read())["segments"]]


def check_exactly_once(sid: str, http_base: str, results: list[dict[str, Any]]) -> list[str]:
    seqs = [r["seq"] for r in results]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), f"out of order or duplicated: {seqs}"
    finals = [r["text"] for r in results if r["type"] == "final" and r["text"]]
    assert finals == stored_finals(http_base, sid)  # every final the pipeline made arrived, once, in order
    return finals


@on_loop
async def test_dropped_connection_resumes_with_missed_finals(tolk: Running) -> None:
    pcm, reference = jfk()
    half = int(6.5 * 10) * CHUNK  # mid-sentence ("what your country | can do for you")
    sid = "resume-drop"
    async with aiohttp.ClientSession() as http:
        a = await connect(http, tolk.ws, {"session_id": sid})
        assert a.messages[0]["type"] == "started" and "resumed" not in a.messages[0]
        await a.send(pcm[:half])
        last = max([r["seq"] for r in a.results], default=0)
        # The network drops here: a second of silence (which ends the utterance, so its final is due) still
        # reaches the server, but nothing sent back from now on reaches this client.
        await a.send(bytes(RATE * 2))
        await a.ws.close()
        await a.reader
        lost = [r for r in a.results if r["seq"] > last]
        a.messages = [m for m in a.messages if m not in lost]
        await asyncio.sleep(5)

        token = a.messages[0]["resume_token"]
        b = await connect(http, tolk.ws, {"session_id": sid, "resume_from": last, "resume_token": token})
        started = b.messages[0]
        assert started["type"] == "started" and started["resumed"] is True and started["replayed"] >= 1
        await b.send(pcm[half:])
        await b.ws.send_json({"type": "stop"})
        await asyncio.wait_for(b.reader, 60)
        assert b.messages[-1]["type"] == "done"

    results = a.results + b.results
    finals = check_exactly_once(sid, tolk.http, results)
    assert corpus_wer([(reference, " ".join(finals))]) < 0.25


@on_loop
async def test_resume_takes_over_a_half_dead_connection_and_bad_resumes_are_refused(tolk: Running) -> None:
    pcm, _ = jfk()
    sid = "resume-takeover"
    async with aiohttp.ClientSession() as http:
        a = await connect(http, tolk.ws, {"session_id": sid})
        await a.send(pcm[: 30 * CHUNK])
        token = a.messages[0]["resume_token"]
        stranger = await connect(http, tolk.ws, {"session_id": sid, "resume_from": 0, "resume_token": "guess"})
        await asyncio.wait_for(stranger.reader, 10)  # knowing the id is not enough
        assert stranger.messages[-1]["code"] == "unknown_session" and not a.reader.done()
        b = await connect(http, tolk.ws, {"session_id": sid, "resume_from": 0, "resume_token": token})
        assert b.messages[0]["resumed"] is True
        await asyncio.wait_for(a.reader, 10)
        assert any(m.get("code") == "session_resumed" for m in a.messages)
        assert a.ws.close_code == 1008
        dup = await connect(http, tolk.ws, {"session_id": sid})  # a plain start of a live id: refused...
        await asyncio.wait_for(dup.reader, 10)
        assert dup.messages[-1]["code"] == "session_in_use"
        await b.send(pcm[30 * CHUNK : 60 * CHUNK])  # ...and the live connection goes on untouched
        await b.ws.send_json({"type": "stop"})
        await asyncio.wait_for(b.reader, 60)
        assert b.messages[-1]["type"] == "done"
        seqs = [r["seq"] for r in b.results]
        assert seqs == sorted(set(seqs))

        again = await connect(http, tolk.ws, {"session_id": sid})  # ids are single-use
        await asyncio.wait_for(again.reader, 10)
        assert again.messages[-1]["code"] == "session_in_use" and again.ws.close_code == 1008

        late = await connect(http, tolk.ws,  # finished: replay, then done
                             {"session_id": sid, "resume_from": 0, "resume_token": token})
        await asyncio.wait_for(late.reader, 30)
        assert late.messages[0]["resumed"] is True and late.messages[-1]["type"] == "done"
        assert [r["text"] for r in late.results] == [r["text"] for r in b.results if r["type"] == "final" and r["text"]]

        for start, code in (({"session_id": "never-was", "resume_from": 3, "resume_token": token}, "unknown_session"),
                            ({"session_id": sid, "resume_from": 0, "resume_token": token, "sample_rate": 48000},
                             "invalid_start")):
            bad = await connect(http, tolk.ws, start)
            await asyncio.wait_for(bad.reader, 10)
            assert bad.messages[-1]["code"] == code and bad.ws.close_code == 1008


@pytest.fixture
def own_tolk(tmp_path: Path) -> Iterator[Running]:
    run = start_tolk(tmp_path)
    yield run
    stop_tolk(run)


def edge_process(run: Running) -> psutil.Process:
    return next(p for p in run.descendants() if "actor edge" in " ".join(p.cmdline()))


@on_loop
async def test_edge_killed_mid_stream_loses_no_final(own_tolk: Running) -> None:
    pcm, reference = jfk()
    third = len(pcm) // 3 // CHUNK * CHUNK
    sid = "resume-edge-kill"
    async with aiohttp.ClientSession() as http:
        a = await connect(http, own_tolk.ws, {"session_id": sid})
        await a.send(pcm[: 2 * third])
        old = edge_process(own_tolk)
        old.send_signal(signal.SIGKILL)  # no drain, no goodbye: the supervisor starts a new edge
        await asyncio.wait_for(a.reader, 10)
        last = max([r["seq"] for r in a.results], default=0)
        token = a.messages[0]["resume_token"]
        b = await connect(http, own_tolk.ws, {"session_id": sid, "resume_from": last, "resume_token": token},
                          tries=120)
        assert b.messages[0]["type"] == "started" and b.messages[0]["resumed"] is True, b.messages
        assert edge_process(own_tolk).pid != old.pid
        await b.send(pcm[2 * third :])
        await b.ws.send_json({"type": "stop"})
        await asyncio.wait_for(b.reader, 90)
        assert b.messages[-1]["type"] == "done", b.messages[-3:]
    finals = check_exactly_once(sid, own_tolk.http, a.results + b.results)
    assert corpus_wer([(reference, " ".join(finals))]) < 0.25


def t(seq: int, index: int, kind: ResultKind = ResultKind.FINAL, text: str = "x") -> Transcript:
    return Transcript(session_id="s", utterance_id=index, seq=seq, final_index=index, kind=kind, partition=0,
                      text=text)


def test_missed_replays_a_gap_free_run_after_what_was_seen() -> None:
    # seq 5 twice (a redelivery); index 3 is an empty final (nothing said); index 5 is still in the pipeline.
    stored = [t(2, 1), t(3, 2, ResultKind.PARTIAL), t(5, 2), t(7, 3, text=""), t(9, 4), t(12, 6), t(5, 2)]
    assert [r.seq for r in missed(stored, after_seq=2)] == [5, 9]  # stops before index 5: 6 must not overtake it
    assert [r.seq for r in missed(stored, after_seq=6)] == [9]
    assert missed(stored, after_seq=12) == []
    ended = [t(2, 1), t(4, 2), t(6, 3, ResultKind.END, "")]
    assert [(r.seq, r.kind) for r in missed(ended, 2)] == [(4, ResultKind.FINAL), (6, ResultKind.END)]


def test_resume_from_is_checked() -> None:
    base = {"type": "start", "session_id": "abc", "resume_token": "t0k"}
    assert parse_start({**base, "resume_from": 7}).resume_from == 7
    assert parse_start({**base, "resume_from": 7}).resume_token == "t0k"
    assert parse_start(base).resume_token == ""  # only meaningful with resume_from
    for bad in ({**base, "resume_from": -1}, {**base, "resume_from": "7"}, {**base, "resume_from": True},
                {"type": "start", "resume_from": 3, "resume_token": "t"}, {**base, "resume_from": 1, "resume_token": 5},
                {"type": "start", "session_id": "abc", "resume_from": 1}):
        with pytest.raises(ProtocolError) as err:
            parse_start(bad)
        assert err.value.code is ErrorCode.INVALID_START
