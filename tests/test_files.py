"""File transcription and transcript export through a real `tolk up`: uploads of real speech."""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from loadtest.client import stream_pcm
from loadtest.speech import Clip, clips, encode_audio
from loadtest.wer import corpus_wer
from tests.conftest import UPLOAD_LIMIT, Running

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]


def mp3_of(c: Clip) -> bytes:
    pcm, rate = c.pcm16()
    return encode_audio(np.frombuffer(pcm, "<i2"), rate, "mp3", "libmp3lame")


def clip(prefix: str) -> Clip:
    return next(c for c in clips("en") if c.name.startswith(prefix))


async def post(tolk: Running, data: bytes, filename: str = "speech.mp3", **fields: str) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    for k, v in fields.items():
        form.add_field(k, v)
    http = aiohttp.ClientSession()
    try:
        resp = await http.post(f"{tolk.http}/v1/transcriptions", data=form, timeout=aiohttp.ClientTimeout(total=300))
        await resp.read()
        return resp
    finally:
        await http.close()


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        if all(line.startswith(":") for line in block.split("\n")):
            assert block == ": ping", block  # a keep-alive comment (TOLK_SSE_PING_S=1 in tests)
            continue
        name = re.search(r"^event: (.*)$", block, re.M)
        data = re.search(r"^data: (.*)$", block, re.M)
        assert name and data, block
        events.append((name.group(1), json.loads(data.group(1))))
    return events


def check_srt(text: str) -> list[tuple[float, float]]:
    blocks = text.strip().split("\n\n")
    times = []
    for i, block in enumerate(blocks, 1):
        lines = block.split("\n")
        assert lines[0] == str(i), block
        m = re.fullmatch(r"(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})", lines[1])
        assert m, lines[1]
        g = [int(x) for x in m.groups()]
        times.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000))
        assert lines[2].strip(), block
    return times


def check_vtt(text: str) -> list[tuple[float, float]]:
    assert text.startswith("WEBVTT\n")
    times = []
    for m in re.finditer(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)$", text, re.M):
        g = [int(x) for x in m.groups()[:8]]
        times.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000))
    return times


def monotonic(times: list[tuple[float, float]]) -> None:
    assert times
    for (s0, e0), (s1, e1) in itertools.pairwise(times):
        assert s0 < e0 <= s1 < e1, times


async def test_event_streams_pass_proxies(tolk: Running) -> None:
    """Behind nginx-style proxies: the headers that stop response buffering, and `: ping` comments while a long
    silence at the start of an upload yields no events (the tests' stack pings after 1 s; 15 s by default)."""
    c = clip("en_jfk")
    pcm, rate = c.pcm16()
    audio = np.concatenate([np.zeros(rate * 40, "<i2"), np.frombuffer(pcm, "<i2")])
    resp = await post(tolk, encode_audio(audio, rate, "mp3", "libmp3lame"), stream="true")
    assert resp.status == 200
    assert resp.headers["X-Accel-Buffering"] == "no" and resp.headers["Cache-Control"] == "no-cache"
    text = await resp.text()
    first = text.index("event: ")
    assert text[:first].count(": ping\n\n") >= 2, text[:200]  # 40 s of silence at 10x real time: ≥ 4 s quiet
    events = parse_sse(text)
    assert events[-1][0] == "done" and corpus_wer([(c.reference, events[-1][1]["text"])]) < 0.15


async def test_long_upload_streams_partials_then_finals(tolk: Running) -> None:
    c = clip("en_gb0")  # 127 s
    resp = await post(tolk, mp3_of(c), stream="true", response_format="verbose_json")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = parse_sse(await resp.text())
    kinds = [name for name, _ in events]
    assert kinds[-1] == "done" and "final" in kinds and "partial" in kinds
    assert kinds.index("partial") < kinds.index("final")
    finals = [d for name, d in events if name == "final"]
    said = " ".join(d["text"] for d in finals)
    assert corpus_wer([(c.reference, said)]) <= 0.15
    done = events[-1][1]
    assert done["text"] and done["segments"] and done["duration"] > 120
    assert [s["start"] for s in done["segments"]] == sorted(s["start"] for s in done["segments"])


async def test_srt_vtt_and_text_formats(tolk: Running) -> None:
    c = clip("en_jfk")
    data = mp3_of(c)
    srt = await post(tolk, data, response_format="srt")
    assert srt.status == 200 and "subrip" in srt.headers["Content-Type"]
    monotonic(check_srt(await srt.text()))
    vtt = await post(tolk, data, response_format="vtt")
    assert vtt.status == 200 and vtt.headers["Content-Type"].startswith("text/vtt")
    monotonic(check_vtt(await vtt.text()))
    js = await post(tolk, data)
    assert js.status == 200 and corpus_wer([(c.reference, (await js.json())["text"])]) < 0.1
    # Any container FFmpeg reads: the original WAV too.
    wav = await post(tolk, c.path.read_bytes(), filename="x.wav", response_format="text")
    assert wav.status == 200 and corpus_wer([(c.reference, await wav.text())]) < 0.1


async def test_export_of_a_finished_microphone_session(tolk: Running) -> None:
    c = clip("en_jfk")
    run = await stream_pcm(tolk.ws, *c.pcm16(), pace=4.0)
    assert run.done
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{tolk.http}/v1/sessions/{run.session_id}/transcript?format=vtt") as resp:
            assert resp.status == 200
            monotonic(check_vtt(await resp.text()))
        async with http.get(f"{tolk.http}/v1/sessions/{run.session_id}/transcript?format=srt") as resp:
            monotonic(check_srt(await resp.text()))
        async with http.get(f"{tolk.http}/v1/sessions/never-was/transcript") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
        async with http.get(f"{tolk.http}/v1/sessions/a.b/transcript") as resp:
            assert resp.status == 400
        async with http.get(f"{tolk.http}/v1/sessions/{run.session_id}/transcript?format=docx") as resp:
            assert resp.status == 400


async def test_bad_uploads_get_clear_errors(tolk: Running, tmp_path: Path) -> None:
    c = clip("en_jfk")
    wav = c.path.read_bytes()

    async def expect(resp: aiohttp.ClientResponse, status: int, code: str) -> None:
        assert resp.status == status, await resp.text()
        assert (await resp.json())["error"]["code"] == code

    await expect(await post(tolk, b""), 400, "empty_file")
    await expect(await post(tolk, wav[:100]), 415, "unsupported_media")  # a header and nothing else
    await expect(await post(tolk, b"hello, I am a text file\n" * 100, filename="notes.txt"), 415, "unsupported_media")
    await expect(await post(tolk, os.urandom(UPLOAD_LIMIT + 1000)), 413, "file_too_large")
    await expect(await post(tolk, wav, response_format="docx"), 400, "invalid_request")
    await expect(await post(tolk, wav, language="klingon"), 400, "unsupported_language")
    # Truncated mid-stream: what decodes is transcribed.
    half = await post(tolk, wav[: len(wav) // 2], response_format="text")
    assert half.status == 200 and "fellow americans" in (await half.text()).lower()
    # A hostile name is never used as a path: the upload is transcribed, nothing lands outside the upload dir.
    hostile = await post(tolk, wav, filename="../../../../tmp/tolk-pwned.wav", response_format="text")
    assert hostile.status == 200 and not Path("/tmp/tolk-pwned.wav").exists()
    uploads = tolk.log.parent / "uploads"
    assert uploads.is_dir() and not any(uploads.iterdir()), "uploads are removed once transcribed"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{tolk.http}/v1/transcriptions", data=b"raw", headers={"Content-Type": "audio/wav"}) as r:
            assert r.status == 400


async def test_websocket_upload(tolk: Running) -> None:
    c = clip("en_jfk")
    data = c.path.read_bytes()
    results: list[dict[str, Any]] = []
    url = tolk.ws.replace("/v1/listen", "/v1/transcriptions/ws")
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json({"type": "file", "language": "en", "targets": ["pt"]})
        for off in range(0, len(data), 64000):
            await ws.send_bytes(data[off : off + 64000])
        await ws.send_json({"type": "end"})
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            results.append(json.loads(msg.data))
    kinds = [r["type"] for r in results]
    assert kinds[0] == "started" and kinds[-1] == "done" and "final" in kinds
    finals = [r for r in results if r["type"] == "final" and r["text"]]
    assert corpus_wer([(c.reference, " ".join(r["text"] for r in finals))]) < 0.1
    assert all(r["translations"].get("pt") for r in finals)
