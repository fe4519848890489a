"""Broadcast channels end to end: a local HTTP "radio" streams a real clip; listeners subscribe through a
real `tolk up` (ingest, segmenter, stt, translator, fan-out, edge on a real nats-server)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from loadtest.speech import clips, encode_audio
from loadtest.wer import corpus_wer
from tests.conftest import Running, free_port, start_tolk, stop_tolk

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]

GRACE_S = 3.0


def encode(pcm: bytes, rate: int, fmt: str, codec: str, bitrate: int = 48000) -> bytes:
    """A real compressed stream of a real clip, encoded with PyAV (as a radio encoder would)."""
    return encode_audio(np.frombuffer(pcm, "<i2"), rate, fmt, codec, bitrate)


@dataclass
class Radio:
    url: str
    requests: dict[str, int] = field(default_factory=dict)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def radio() -> AsyncIterator[Radio]:
    jfk = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    pcm, rate = jfk.pcm16()
    silence = bytes(rate * 2)  # 1 s between repetitions, like a station's pause
    mp3 = encode(pcm + silence, rate, "mp3", "libmp3lame")
    long = next(c for c in clips("en") if c.name.startswith("en_gb0"))
    ogg = encode(long.pcm16()[0], long.pcm16()[1], "ogg", "libopus", 32000)
    state = Radio("")

    async def live_mp3(request: web.Request) -> web.StreamResponse:
        """An endless station: the clip on repeat, as fast as the reader takes it (it paces itself)."""
        name = request.match_info["name"]
        state.requests[name] = state.requests.get(name, 0) + 1
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)
        sent = 0
        try:
            while True:
                for off in range(0, len(mp3), 4096):
                    await resp.write(mp3[off : off + 4096])
                    sent += 4096
                    if name == "flaky" and state.requests[name] == 1 and sent > 6 * 6000:
                        request.transport.close()  # type: ignore[union-attr]  # the source drops mid-stream
                        return resp
        except (ConnectionError, RuntimeError):
            return resp

    async def ogg_stream(request: web.Request) -> web.StreamResponse:
        state.requests["ogg"] = state.requests.get("ogg", 0) + 1
        resp = web.StreamResponse(headers={"Content-Type": "audio/ogg"})
        await resp.prepare(request)
        try:
            for off in range(0, len(ogg), 4096):
                await resp.write(ogg[off : off + 4096])
        except (ConnectionError, RuntimeError):
            pass
        return resp

    app = web.Application()
    app.add_routes([web.get("/live/{name}.mp3", live_mp3), web.get("/talk.ogg", ogg_stream)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@pytest.fixture(scope="module")
def tolk_channels(radio: Radio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = {"channels": [
        {"name": "radio", "url": f"{radio.url}/live/radio.mp3", "language": "en", "title": "JFK radio"},
        {"name": "flaky", "url": f"{radio.url}/live/flaky.mp3", "language": "en"},
        {"name": "talk", "url": f"{radio.url}/talk.ogg", "language": "en", "targets": ["pt"]},
        {"name": "dead", "url": "http://127.0.0.1:9/nothing.mp3", "language": "en"},
    ]}
    run = start_tolk(tmp_path_factory.mktemp("tolk-channels"),
                     env={"TOLK_CHANNELS": json.dumps(config), "TOLK_INGEST_GRACE_S": str(GRACE_S)})
    yield run
    stop_tolk(run)


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return await resp.json()


@dataclass
class Heard:
    control: list[dict[str, Any]] = field(default_factory=list)
    finals: list[dict[str, Any]] = field(default_factory=list)
    audio: list[tuple[float, int]] = field(default_factory=list)  # (stream time, mp3 bytes)


async def listen(ws_url: str, channel: str, seconds: float, targets: list[str] | None = None,
                 then: list[tuple[float, dict[str, Any]]] | None = None, after: dict[str, Any] | None = None) -> Heard:
    heard = Heard()
    msg: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if targets is not None:
        msg["targets"] = targets
    if after is not None:
        msg["after"] = after
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        await ws.send_json(msg)
        began = time.monotonic()
        pending = sorted(then or [], key=lambda x: x[0])
        while (left := seconds - (time.monotonic() - began)) > 0:
            if pending and time.monotonic() - began >= pending[0][0]:
                await ws.send_json(pending.pop(0)[1])
            try:
                m = await ws.receive(timeout=min(left, 0.5))
            except TimeoutError:
                continue
            if m.type == aiohttp.WSMsgType.BINARY:
                (t,) = struct.unpack("<d", m.data[:8])
                heard.audio.append((t, len(m.data) - 8))
            elif m.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(m.data)
                (heard.finals if data["type"] == "final" else heard.control).append(data)
            else:
                break
    return heard


JFK = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"


async def test_channels_are_listed(tolk_channels: Running) -> None:
    listed = {c["name"]: c for c in (await get_json(f"{tolk_channels.http}/v1/channels"))["channels"]}
    assert set(listed) == {"radio", "flaky", "talk", "dead"}
    assert listed["radio"]["title"] == "JFK radio" and listed["talk"]["targets"] == ["pt"]
    assert not listed["radio"]["live"]


async def test_three_listeners_one_pipeline_same_finals_then_it_stops(tolk_channels: Running) -> None:
    heard = await asyncio.gather(*(listen(tolk_channels.ws, "radio", 16.0) for _ in range(3)))
    for h in heard:
        assert h.control[0]["type"] == "subscribed" and h.control[0]["audio"]["codec"] == "mp3"
        assert h.finals, h.control
        assert h.audio and all(b > a for (a, _), (b, _) in zip(h.audio, h.audio[1:], strict=False))
    texts = [[(f["session_id"], f["seq"], f["text"]) for f in h.finals if not f.get("replay")] for h in heard]
    common = set(texts[0]) & set(texts[1]) & set(texts[2])
    assert len(common) >= 3, texts  # all three saw the same finals of the same run
    assert len({sid for sid, _, _ in common}) == 1
    # Captions are on the audio's clock: every final lies within the audio relayed so far.
    h = heard[0]
    assert all(0 <= f["start"] < f["end"] <= h.audio[-1][0] + 2.0 for f in h.finals if not f.get("replay"))
    said = " ".join(f["text"] for f in h.finals if not f.get("replay"))
    assert corpus_wer([(JFK, said[: len(JFK) + 40])]) < 0.5  # the station repeats the clip: a loose check
    log = tolk_channels.log.read_text()
    assert len(re.findall(r"radio: first listener; starting", log)) == 1, "one pipeline for three listeners"
    listed = {c["name"]: c for c in (await get_json(f"{tolk_channels.http}/v1/channels"))["channels"]}
    # After the last listener left, the run stops once the grace period has passed.
    deadline = time.monotonic() + GRACE_S + 10
    while time.monotonic() < deadline and listed["radio"]["live"]:
        await asyncio.sleep(0.5)
        listed = {c["name"]: c for c in (await get_json(f"{tolk_channels.http}/v1/channels"))["channels"]}
    assert not listed["radio"]["live"]
    assert "radio: no listener for" in tolk_channels.log.read_text()


async def test_late_joiner_gets_the_last_finals_at_once(tolk_channels: Running) -> None:
    first = asyncio.create_task(listen(tolk_channels.ws, "radio", 14.0))
    await asyncio.sleep(10.0)
    late = await listen(tolk_channels.ws, "radio", 2.0)
    early = await first
    replayed = [f for f in late.finals if f.get("replay")]
    assert replayed, late
    seen = {(f["session_id"], f["seq"]) for f in early.finals}
    assert {(f["session_id"], f["seq"]) for f in replayed} & seen
    # A reconnect names the last final it saw (here: one before early's last): only what came after is replayed.
    said = [f for f in early.finals if f["text"]]
    assert len(said) >= 2, early.finals
    cursor = said[-2]
    back = await listen(tolk_channels.ws, "radio", 2.0, after={"session_id": cursor["session_id"],
                                                               "seq": cursor["seq"]})
    again = [(f["session_id"], f["seq"]) for f in back.finals if f.get("replay")]
    assert (said[-1]["session_id"], said[-1]["seq"]) in again, (again, said[-1])
    assert not {(f["session_id"], f["seq"]) for f in said[:-1]} & set(again), again
    assert all(seq > cursor["seq"] for sid, seq in again if sid == cursor["session_id"])


async def test_switch_channel_and_targets_without_reconnecting(tolk_channels: Running) -> None:
    heard = await listen(tolk_channels.ws, "radio", 24.0, then=[
        (8.0, {"type": "subscribe", "channel": "talk"}),  # talk's default targets: ["pt"]
        (9.0, {"type": "subscribe", "channel": "nope"}),  # reported; stays on talk
    ])
    subscribed = [c for c in heard.control if c["type"] == "subscribed"]
    assert [c["channel"] for c in subscribed] == ["radio", "talk"]
    assert subscribed[1]["targets"] == ["pt"]
    assert any(c.get("code") == "unknown_channel" for c in heard.control)
    talk = [f for f in heard.finals if f["channel"] == "talk" and not f.get("replay")]
    assert talk and all(f["translations"].get("pt") for f in talk if f["text"])


async def test_source_drop_reconnects(tolk_channels: Running, radio: Radio) -> None:
    heard = await listen(tolk_channels.ws, "flaky", 22.0)
    assert radio.requests.get("flaky", 0) >= 2, radio.requests
    assert "flaky: reconnecting in" in tolk_channels.log.read_text()
    times = [f["start"] for f in heard.finals]
    assert times and max(times) > 8.0, times  # finals kept coming after the drop (~6 s in)
    text = ingest_metrics(tolk_channels)
    assert re.search(r'^tolk_ingest_reconnects_total\{channel="flaky"\} [1-9]', text, re.M), text
    audio = re.search(r'^tolk_ingest_audio_seconds_total\{channel="flaky"\} (\S+)', text, re.M)
    assert audio and float(audio.group(1)) > 10, text


def ingest_metrics(run: Running) -> str:
    status = subprocess.run([str(Path(sys.executable).parent / "tolk"), "status", "--json", "--data-dir",
                             str(run.log.parent / "data")], capture_output=True, text=True, timeout=60, check=True)
    port = next(a["metrics_port"] for a in json.loads(status.stdout)["actors"] if a["actor"] == "ingest")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def test_bad_subscribes_and_metrics(tolk_channels: Running) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(tolk_channels.ws) as ws:
        await ws.send_json({"type": "subscribe", "channel": "../etc"})
        err = await ws.receive_json(timeout=10)
        assert err["code"] == "invalid_subscribe"
        await ws.send_json({"type": "subscribe", "channel": "radio", "targets": ["pt"]})
        assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
        await ws.send_bytes(b"\x00\x00")  # listeners do not stream
        while (m := await ws.receive_json(timeout=10))["type"] != "error":
            pass
        assert m["code"] == "not_streaming"
        async with http.get(f"{tolk_channels.http}/metrics") as resp:
            text = await resp.text()
        assert re.search(r"^connected_clients [1-9]", text, re.M), text
        assert re.search(r'^open_streams\{language="en"\} [1-9]', text, re.M), text
        assert re.search(r'^channel_listeners\{channel="radio"\} 1', text, re.M), text
        await ws.send_json({"type": "unsubscribe"})
        while (m := await ws.receive_json(timeout=10))["type"] != "unsubscribed":
            pass
    # A channel whose source never answers: the listener is told nothing false, ingest keeps retrying.
    heard = await listen(tolk_channels.ws, "dead", 3.0)
    assert heard.control[0]["type"] == "subscribed" and not heard.finals


async def test_client_library_follows_a_channel_with_audio_and_reconnects(tolk_channels: Running) -> None:
    """tolk_client.subscribe: captions and the relayed MP3 on the channel's clock; after a drop it comes back
    with `after`, so the finals it had are not sent again."""
    import tolk_client

    finals: list[tolk_client.Result] = []
    frames: list[tolk_client.AudioFrame] = []
    async with tolk_client.subscribe(tolk_channels.http, "radio", audio=True) as ch:
        began = time.monotonic()
        dropped = False
        async for item in ch:
            if isinstance(item, tolk_client.AudioFrame):
                frames.append(item)
            elif item.is_final and item.text:
                finals.append(item)
            if not dropped and time.monotonic() - began > 8 and ch.last_final:
                dropped = True
                assert ch._ws is not None
                await ch._ws.close()  # as a network drop looks to the iterator: it reconnects
            if time.monotonic() - began > 16:
                break
    assert ch.subscribed["channel"] == "radio" and ch.reconnects >= 1
    assert frames and all(b.stream_time > a.stream_time for a, b in itertools.pairwise(frames))
    assert frames[0].mp3[:3] == b"ID3" or frames[0].mp3[0] == 0xFF  # MP3: a tag or a frame sync
    keys = [(r.session_id, r.seq) for r in finals]
    assert len(keys) == len(set(keys)), keys  # nothing twice across the reconnect
    live = [r for r in finals if not r.replay]
    assert live and all(0 <= r.start < r.end <= frames[-1].stream_time + 2.0 for r in live)
