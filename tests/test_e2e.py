"""End to end through a real `tolk up`: real nats-server, real models, real speech over WebSocket."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soxr

import nats
from actors.runtime import permissions, pools
from loadtest.client import SessionRun, stream_pcm
from loadtest.mic import metric_sum, stt_scrapes
from loadtest.speech import Clip, clips
from loadtest.wer import corpus_wer, normalise
from tests.conftest import Running

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]

WER_BOUND = 0.1  # Whisper's normaliser; streaming measured 0.04 here (python -m loadtest.accuracy)


async def stream_many(ws: str, cs: list[Clip], pace: float, concurrency: int) -> dict[str, SessionRun]:
    sem = asyncio.Semaphore(concurrency)

    async def one(c: Clip) -> tuple[str, SessionRun]:
        async with sem:
            pcm, rate = c.pcm16()
            return c.name, await stream_pcm(ws, pcm, rate, pace=pace, timeout=180)

    # Longest first, so the long clip overlaps the short ones instead of trailing them.
    return dict(await asyncio.gather(*(one(c) for c in sorted(cs, key=lambda c: -c.seconds))))


def check_ordering(run: SessionRun) -> None:
    assert run.done, f"{run.session_id}: no done (errors {run.errors})"
    assert run.close_code == 1000
    assert not run.errors
    seqs = [r["seq"] for r in run.results]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "results out of order or duplicated"
    assert all(r["session_id"] == run.session_id for r in run.results)
    finalised: set[int] = set()
    last_utt = 0
    for r in run.results:
        utt = r["utterance_id"]
        assert utt >= last_utt, "utterances out of order"
        last_utt = utt
        assert utt not in finalised, f"{r['type']} after the final of utterance {utt}"
        if r["type"] == "final":
            finalised.add(utt)
            words = [w["start"] for w in r["words"]]
            assert words == sorted(words)
        assert r["latency_ms"] is not None and r["latency_ms"] > 0
        assert r["stable_text"] == r["text"][: len(r["stable_text"])] or r["type"] == "partial"


def check_partials(c: Clip, run: SessionRun) -> None:
    if c.seconds <= 3:
        return
    # An utterance of >= 2 s (at most 1 s of it pre-roll) always gets a partial window 400 ms after
    # its onset, and STT never skips an utterance's first partial: so it must have shown one.
    partial_utts = {r["utterance_id"] for r in run.partials}
    for f in run.finals:
        if f["end"] - f["start"] >= 2.0:
            assert f["utterance_id"] in partial_utts, f"{c.name}: final {f['text']!r} had no partial before it"
    assert run.partials, f"{c.name}: no partial at all"


def report(label: str, runs: dict[str, SessionRun], by_name: dict[str, Clip]) -> float:
    pairs = [(by_name[n].reference, r.text()) for n, r in runs.items()]
    wer = corpus_wer(pairs)
    finals = sorted(x for r in runs.values() for x in r.final_latencies())
    firsts = sorted(x for r in runs.values() for x in r.first_partial_latencies())
    print(f"\n{label}: corpus WER {wer:.3f} over {len(runs)} clips; final latency p50 "
          f"{finals[len(finals) // 2]:.2f}s; first partial p50 {firsts[len(firsts) // 2]:.2f}s")
    for n, r in runs.items():
        print(f"  {n}: WER {corpus_wer([(by_name[n].reference, r.text())]):.3f}")
    return wer


async def test_english_clips_at_real_time(tolk: Running) -> None:
    english = clips("en")
    runs = await stream_many(tolk.ws, english, pace=1.0, concurrency=5)
    by_name = {c.name: c for c in english}
    for name, run in runs.items():
        check_ordering(run)
        check_partials(by_name[name], run)
    assert report("real time", runs, by_name) <= WER_BOUND


async def test_english_clips_at_four_times_real_time(tolk: Running) -> None:
    english = clips("en")
    runs = await stream_many(tolk.ws, english, pace=4.0, concurrency=3)
    for run in runs.values():
        check_ordering(run)
    assert report("4x real time", runs, {c.name: c for c in english}) <= WER_BOUND


async def test_two_concurrent_sessions_never_mix(tolk: Running) -> None:
    a, b = next(c for c in clips("en") if c.name.startswith("en_jfk")), clips("en")[-1]
    (pa, ra), (pb, rb) = a.pcm16(), b.pcm16()
    run_a, run_b = await asyncio.gather(stream_pcm(tolk.ws, pa, ra), stream_pcm(tolk.ws, pb, rb))
    assert run_a.session_id != run_b.session_id
    for run, own, other in ((run_a, a, b), (run_b, b, a)):
        check_ordering(run)
        assert corpus_wer([(own.reference, run.text())]) < 0.2
        assert corpus_wer([(other.reference, run.text())]) > 0.8


async def test_base64_frames_and_float_audio_at_48k(tolk: Running) -> None:
    c = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    pcm, rate = c.pcm16()
    b64 = await stream_pcm(tolk.ws, pcm, rate, base64_frames=True, pace=2.0)
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    f32 = soxr.resample(samples, rate, 48000).astype("<f4").tobytes()
    flt = await stream_pcm(tolk.ws, f32, 48000, encoding="pcm_f32le", pace=2.0, chunk_ms=40)
    for run in (b64, flt):
        check_ordering(run)
        assert corpus_wer([(c.reference, run.text())]) < 0.1


# ---------------------------------------------------------------------- bad input
async def expect_error(ws_url: str, steps: list[Any], code: str | None, close: int, timeout: float = 15) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        try:
            for step in steps:
                if isinstance(step, bytes):
                    await ws.send_bytes(step)
                elif isinstance(step, dict):
                    await ws.send_str(json.dumps(step))
                elif isinstance(step, str):
                    await ws.send_str(step)
        except ConnectionError:
            pass  # the server may close while a huge frame is still being written; read why below
        seen = []
        async with asyncio.timeout(timeout):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    seen.append(json.loads(msg.data))
        errors = [m for m in seen if m["type"] == "error"]
        if code is not None:
            assert errors and errors[-1]["code"] == code and errors[-1]["message"], seen
        assert ws.close_code == close


START = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"}

BAD = [
    ([b"\x00\x00" * 160], "audio_before_start", 1008),
    ([{"type": "audio", "data": base64.b64encode(b"\0\0").decode()}], "audio_before_start", 1008),
    ([{"type": "stop"}], "invalid_start", 1008),
    (["this is not json"], "invalid_json", 1007),
    ([{"type": "start", "sample_rate": "fast"}], "invalid_start", 1008),
    ([{**START, "sample_rate": 96000}], "unsupported_sample_rate", 1003),
    ([{**START, "sample_rate": 4000}], "unsupported_sample_rate", 1003),
    ([{**START, "encoding": "opus"}], "unsupported_encoding", 1003),
    ([{**START, "language": "xx-nope"}], "unsupported_language", 1003),
    ([{**START, "session_id": "../etc"}], "invalid_session_id", 1008),
    ([START, b"\x00" * 321], "invalid_frame", 1007),
    ([{**START, "encoding": "pcm_f32le"}, b"\x00" * 6], "invalid_frame", 1007),
    ([START, b"\x00" * ((1 << 20) + 2)], "frame_too_large", 1009),
    ([START, b"\x00" * (3 << 20)], "frame_too_large", 1009),
    ([START, {"type": "audio", "data": "not*base64!"}], "invalid_base64", 1007),
    ([START, {"type": "audio", "data": 12}], "invalid_base64", 1007),
    ([START, START], "invalid_start", 1008),
    ([], "idle_timeout", 1008),
    ([START, b"\x00\x00" * 1600], "idle_timeout", 1008),
]


async def test_bad_input_gets_clear_errors_and_others_keep_working(tolk: Running) -> None:
    good = next(c for c in clips("en") if c.name.startswith("en_librispeech_61"))
    pcm, rate = good.pcm16()
    healthy = asyncio.create_task(stream_pcm(tolk.ws, pcm, rate))
    for steps, code, close in BAD:
        await expect_error(tolk.ws, steps, code, close)
    run = await healthy
    check_ordering(run)
    assert corpus_wer([(good.reference, run.text())]) < 0.15


async def test_session_id_in_use_and_unknown_types(tolk: Running) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(tolk.ws) as ws:
        await ws.send_json({**START, "session_id": "dup-check"})
        assert (await ws.receive_json(timeout=10))["type"] == "started"
        await expect_error(tolk.ws, [{**START, "session_id": "dup-check"}], "session_in_use", 1008)
        await ws.send_json({"type": "set_colour", "colour": "red"})
        msg = await ws.receive_json(timeout=10)
        assert msg["type"] == "error" and msg["code"] == "unknown_type"
        await ws.send_bytes(b"\x00\x00" * 1600)
        await ws.send_json({"type": "stop"})
        msgs = [await ws.receive_json(timeout=30)]
        assert msgs[-1]["type"] == "done"
        assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1000


async def test_client_vanishing_mid_stream_harms_nobody(tolk: Running) -> None:
    c = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    pcm, rate = c.pcm16()
    async with aiohttp.ClientSession() as http, http.ws_connect(tolk.ws) as ws:
        await ws.send_json(START)
        await ws.receive_json(timeout=10)
        await ws.send_bytes(pcm[: len(pcm) // 2])
    run = await stream_pcm(tolk.ws, pcm, rate, pace=2.0)
    check_ordering(run)
    assert corpus_wer([(c.reference, run.text())]) < 0.1


def embedded_nats_url(tolk: Running) -> str:
    ports = next((Path(tolk.log).parent / "data" / "run").glob("*.ports"))
    return str(json.loads(ports.read_text())["nats"][0])


def embedded_admin(tolk: Running) -> dict[str, str]:
    """The admin user `tolk up` gave its embedded NATS (per-actor users, nats/permissions.toml)."""
    password = permissions.local_password(Path(tolk.log).parent / "data")
    assert password, "tolk up should have written its NATS users"
    return {"user": permissions.ADMIN, "password": password}


async def test_garbage_on_internal_subjects_crashes_no_actor(tolk: Running) -> None:
    since = len(tolk.log.read_text())  # the stack is shared: what earlier tests did to it (kill an actor) is theirs
    nc = await nats.connect(embedded_nats_url(tolk), **embedded_admin(tolk))
    js = nc.jetstream()
    pool = pools.load().route("en").name
    for subject in ("tolk.audio.0.junk", pools.subject("final", pool, 0, "junk"),
                    pools.subject("partial", pool, 0, "junk"), "tolk.transcript.0.junk", "tolk.result.0.junk"):
        for payload in (b"", b"\xff\xfe garbage", json.dumps({"v": 1}).encode()):
            await js.publish(subject, payload)
    # A listener record that is not one: the translator ignores it, the session below still works.
    kv = await js.key_value("tolk_listeners")
    await kv.put("junk.owner", b"\x00garbage")
    await nc.close()
    c = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    pcm, rate = c.pcm16()
    run = await stream_pcm(tolk.ws, pcm, rate, pace=2.0)
    check_ordering(run)
    assert corpus_wer([(c.reference, run.text())]) < 0.1
    log = tolk.log.read_text()[since:]
    assert "exited with" not in log, "an actor crashed on garbage"
    assert "terminating undecodable message" in log


def stt_metrics(tolk: Running, expect: Iterable[str] = ()) -> dict[str, str]:
    """Each STT process's /metrics by instance; waits (bounded) until every instance in `expect` is listed, so a
    slow heartbeat read is not a lost counter."""
    texts: dict[str, str] = {}
    for _ in range(10):
        texts = {a["instance"]: text for a, text in stt_scrapes(Path(tolk.log).parent / "data")}
        if set(expect) <= set(texts):
            break
        time.sleep(1)
    return texts


def trimmed_after_last_word(c: Clip) -> bytes:
    """The clip cut 30 ms after its last loud sample: `stop` follows the last word with no pause at all."""
    pcm, rate = c.pcm16()
    x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > 0.02)
    end = (int(loud[-1]) + 1) * 160 + rate * 30 // 1000
    return pcm[: end * 2]


async def test_the_last_words_before_stop_are_kept(tolk: Running) -> None:
    """#13: the words right before `stop` (no pause after them) reach the last final."""
    c = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    run = await stream_pcm(tolk.ws, trimmed_after_last_word(c), 16000, pace=2.0)
    check_ordering(run)
    assert run.finals[-1]["endpoint"] == "stop"
    assert normalise(run.text())[-3:] == ["for", "your", "country"], run.text()
    assert corpus_wer([(c.reference, run.text())]) < 0.1, run.text()


async def test_finals_reuse_their_early_decode(tolk: Running) -> None:
    """Utterances ended by a pause are decoded during the pause (speculative segments); their finals reuse it."""
    before = stt_metrics(tolk)
    c = next(c for c in clips("en") if c.name.startswith("en_gb0"))
    pcm, rate = c.pcm16()
    run = await stream_pcm(tolk.ws, pcm[: rate * 2 * 40], rate, pace=1.0)  # 40 s, about 6 pauses
    check_ordering(run)
    after = stt_metrics(tolk, expect=before)
    assert set(before) <= set(after), ("an STT process went away", sorted(before), sorted(after))
    used = sum(metric_sum(text, "tolk_stt_speculative_total", outcome="used")
               - metric_sum(before.get(instance, ""), "tolk_stt_speculative_total", outcome="used")
               for instance, text in after.items())
    silence_ended = sum(f["endpoint"] == "silence" for f in run.finals)
    assert silence_ended >= 3 and used >= 1, (silence_ended, used)
    assert corpus_wer([(c.reference[: len(run.text()) + 20], run.text())]) < 0.15


@pytest.mark.asyncio(loop_scope="session")
async def test_no_words_where_nobody_speaks(tolk: Running) -> None:
    """Recorded room tone (loud, -22 LUFS), recorded music (-20 LUFS) and a read sentence followed by quiet room
    tone, through the pipeline at real-time pace: no word in a final or a partial on the non-speech, and none
    after the sentence ends (loadtest.hallucination is the long version)."""
    from loadtest import noise
    from loadtest.hallucination import Case, invented, speech_end

    read = next(c for c in clips("en") if c.name.startswith("en_librispeech_2412"))
    pcm, _ = read.pcm16()
    cases = [
        Case("room tone -22 LUFS", "en", noise.to_pcm16(noise.at_lufs(noise.room_tone(12), -22.0))),
        Case("music -20 LUFS", "en", noise.to_pcm16(noise.at_lufs(noise.music(12), -20.0))),
        Case("read + room tone", "en", pcm + noise.to_pcm16(noise.at_lufs(noise.room_tone(8), -45.0)),
             speech_end(pcm)),
    ]
    runs = await asyncio.gather(*(stream_pcm(tolk.ws, c.pcm, 16000, language=c.language) for c in cases))
    for c, run in zip(cases, runs, strict=True):
        row = invented(c, run)
        assert run.done and not run.errors, (c.scenario, run.errors)
        assert row.final_words == 0 and row.partial_words == 0, (c.scenario, row.finals, row.partials)
    assert corpus_wer([(read.reference, runs[2].text())]) < 0.15, runs[2].text()


async def test_flush_ends_the_utterance_now_and_the_next_words_start_another(tolk: Running) -> None:
    """#35: a voice agent's `flush` mid-speech gets that utterance's final next (endpoint `flush`), the words
    after it start a new utterance, and a flush with nothing open is answered by an empty final. The latency goal
    (p95 within 1 s) is measured by `python -m loadtest.flush`."""
    c = next(c for c in clips("en") if c.name.startswith("en_gb0"))
    pcm, rate = c.pcm16()
    pcm = pcm[: rate * 2 * 16]
    step = rate // 10 * 2  # 100 ms frames at real time
    flush_at = {0, 50, 100}  # before any speech, then mid-speech at 5 s and 10 s
    sent: list[float] = []
    results: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(tolk.ws) as ws:
        await ws.send_json({"type": "start", "sample_rate": rate, "language": "en"})
        assert (await ws.receive_json(timeout=30))["type"] == "started"

        async def read() -> None:
            async for msg in ws:
                r = json.loads(msg.data)
                r["at"] = time.monotonic()
                results.append(r)
                if r["type"] in ("done", "error"):
                    return

        reader = asyncio.create_task(read())
        began = time.monotonic()
        for i, off in enumerate(range(0, len(pcm), step)):
            if i in flush_at:
                await ws.send_json({"type": "flush"})
                sent.append(time.monotonic())
            await ws.send_bytes(pcm[off:off + step])
            await asyncio.sleep(max(0.0, began + (i + 1) * 0.1 - time.monotonic()))
        await ws.send_json({"type": "stop"})
        await asyncio.wait_for(reader, 120)
    assert not [r for r in results if r["type"] == "error"], results
    finals = [r for r in results if r["type"] == "final"]
    flushed = [r for r in finals if r["endpoint"] == "flush"]
    assert len(flushed) == len(flush_at), [(f["endpoint"], f["text"]) for f in finals]
    assert flushed[0]["text"] == "" and flushed[0] is finals[0]  # nothing was open yet
    assert all(f["text"] for f in flushed[1:]), flushed
    latencies = [f["at"] - s for f, s in zip(flushed, sent, strict=True)]
    print(f"flush -> final: {', '.join(f'{x:.2f}s' for x in latencies)}")
    assert all(x > 0 for x in latencies)
    for f, s in zip(flushed[1:], sent[1:], strict=True):  # its speech ends by the time the flush was sent
        assert f["end"] <= s - began + 0.3, (f, s - began)
    # The words after a flush are another utterance's; nothing heard twice or lost between them.
    ids = [f["utterance_id"] for f in finals]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    text = " ".join(f["text"] for f in finals)
    ref = normalise(c.reference)
    got = normalise(text)
    reference = " ".join(ref[: max(i for i, w in enumerate(ref) if w == got[-1]) + 1])
    assert corpus_wer([(reference, text)]) < 0.2, text


async def test_a_sessions_vocabulary_spells_its_names(tolk: Running) -> None:
    """#35: tiny.en hears "sloth" as "slaw"; with `vocabulary` the final spells it as the session gave it, and
    a vocabulary over the bounds is refused with `invalid_vocabulary`."""
    c = next(c for c in clips("en") if c.name == "en_conversational_multilingual_ipa.wav")
    pcm, rate = c.pcm16()
    plain, named = await asyncio.gather(
        stream_pcm(tolk.ws, pcm, rate, pace=2.0),
        stream_pcm(tolk.ws, pcm, rate, pace=2.0, start_fields={"vocabulary": ["Sloth", "Kubernetes"]}))
    check_ordering(plain)
    check_ordering(named)
    assert named.started["vocabulary"] == ["Sloth", "Kubernetes"]
    assert "sloth" not in plain.text().lower() and "Sloth" in named.text(), (plain.text(), named.text())
    async with aiohttp.ClientSession() as http, http.ws_connect(tolk.ws) as ws:
        await ws.send_json({"type": "start", "sample_rate": 16000, "vocabulary": [f"t{i}" for i in range(101)]})
        error = await ws.receive_json(timeout=10)
        assert error["code"] == "invalid_vocabulary", error
        assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1008


async def test_a_sessions_endpoint_ms(tolk: Running) -> None:
    """#35: `endpoint_ms` per session on the same speech: 300 ms ends more, shorter utterances than 1500 ms; `false`
    ends none at a pause (only `max_utterance_s` and stop); `configure` changes it for the next utterance; out of
    the bounds: invalid_start, 1008."""
    c = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    pcm, rate = c.pcm16()
    short, long, never = await asyncio.gather(
        stream_pcm(tolk.ws, pcm, rate, pace=2.0, start_fields={"endpoint_ms": 300}),
        stream_pcm(tolk.ws, pcm, rate, pace=2.0, start_fields={"endpoint_ms": 1500},
                   configure=[(1.0, {"endpoint_ms": 1200, "max_utterance_s": 20})]),
        stream_pcm(tolk.ws, pcm, rate, pace=2.0, start_fields={"endpoint_ms": False, "max_utterance_s": 4}))
    for run in (short, long, never):
        check_ordering(run)
        assert corpus_wer([(c.reference, run.text())]) < 0.2, run.text()
    assert short.started["endpoint_ms"] == 300 and never.started["endpoint_ms"] is False
    assert never.started["max_utterance_s"] == 4
    assert long.configured and long.configured[0][1]["endpoint_ms"] == 1200
    assert long.configured[0][1]["max_utterance_s"] == 20
    assert len(short.finals) > len(long.finals), ([f["end"] for f in short.finals], [f["end"] for f in long.finals])
    assert "silence" in {f["endpoint"] for f in short.finals} <= {"silence", "stop"}
    assert {f["endpoint"] for f in never.finals} <= {"max_duration", "stop"} and len(never.finals) >= 2
    for bad in ({"endpoint_ms": 50}, {"endpoint_ms": "300"}, {"max_utterance_s": 60}):
        async with aiohttp.ClientSession() as http, http.ws_connect(tolk.ws) as ws:
            await ws.send_json({"type": "start", "sample_rate": 16000, **bad})
            error = await ws.receive_json(timeout=10)
            assert error["code"] == "invalid_start", error
            assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
