"""Flush benchmark: how soon a voice agent's `flush` is answered by its final, mid-speech, under load.

    python -m loadtest.flush --sessions 1 4 [--seconds 60] [--every 3.0] [--url ws://...]

Each session streams a "microphone" of English clips at real-time pace (`--continuous`: pauses squeezed out, so
every flush lands mid-speech) and sends `{"type":"flush"}` every `--every` seconds (jittered ±30 %, a
different seed per session). The latency is the client's own clock from sending the flush to receiving the final
with `"endpoint":"flush"` that answers it (flush finals come in order, so the k-th answers the k-th flush).
Reports p50 / p95 / max per level, flushes unanswered, and the corpus WER of the finals (a flush mid-word
splits that word between two finals). Goal (issue #35): p95 ≤ 1.0 s. The report is printed and saved under
loadtest/reports/; the last line is `flush p95=<worst level's p95>s unanswered=<n>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import aiohttp

from loadtest.mic import command, edge_url, machine, mic_stream, pct, save_report
from loadtest.speech import clips
from loadtest.wer import corpus_wer

GOAL_P95_S = 1.0
FRAME_S = 0.1


@dataclass
class SessionResult:
    flushes: int = 0
    latencies: list[float] = field(default_factory=list)
    text: str = ""
    reference: str = ""
    errors: list[str] = field(default_factory=list)


@dataclass
class Level:
    sessions: int
    flushes: int
    answered: int
    p50: float
    p95: float
    worst: float
    wer: float
    errors: int
    latencies: list[float]


async def one_session(url: str, pcm: bytes, reference: str, every: float, seed: int) -> SessionResult:
    rng = random.Random(seed)
    out = SessionResult(reference=reference)
    sent: list[float] = []
    got: list[float] = []
    finals: list[str] = []
    step = int(16000 * FRAME_S) * 2
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_json({"type": "start", "sample_rate": 16000, "language": "en"})
        started = await ws.receive_json(timeout=60)
        if started.get("type") != "started":
            out.errors.append(str(started))
            return out

        async def read() -> None:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                r = json.loads(msg.data)
                if r["type"] == "final":
                    finals.append(r["text"])
                    if r.get("endpoint") == "flush":
                        got.append(time.monotonic())
                elif r["type"] == "error":
                    out.errors.append(r.get("code", "?"))
                elif r["type"] == "done":
                    return

        reader = asyncio.create_task(read())
        began = time.monotonic()
        next_flush = every * rng.uniform(0.7, 1.3)
        for i, off in enumerate(range(0, len(pcm), step)):
            now_s = i * FRAME_S
            if now_s >= next_flush:
                await ws.send_json({"type": "flush"})
                sent.append(time.monotonic())
                next_flush = now_s + every * rng.uniform(0.7, 1.3)
            await ws.send_bytes(pcm[off:off + step])
            await asyncio.sleep(max(0.0, began + (i + 1) * FRAME_S - time.monotonic()))
        await ws.send_json({"type": "stop"})
        try:
            await asyncio.wait_for(reader, 180)
        except TimeoutError:
            out.errors.append("no done within 180 s")
            reader.cancel()
    out.flushes = len(sent)
    out.latencies = [g - s for s, g in zip(sent, got, strict=False)]
    out.text = " ".join(finals)
    return out


async def run_level(url: str, n: int, seconds: float, every: float, continuous: bool) -> Level:
    cs = clips("en")
    streams = [mic_stream(cs, i * 3, seconds, continuous) for i in range(n)]
    results = await asyncio.gather(*(one_session(url, pcm, ref, every, seed=i) for i, (pcm, ref) in
                                     enumerate(streams)))
    lat = sorted(x for r in results for x in r.latencies)
    flushes = sum(r.flushes for r in results)
    return Level(sessions=n, flushes=flushes, answered=len(lat), p50=pct(lat, 50), p95=pct(lat, 95),
                 worst=max(lat, default=float("nan")), wer=corpus_wer([(r.reference, r.text) for r in results]),
                 errors=sum(len(r.errors) for r in results), latencies=lat)


def render(levels: list[Level], args: argparse.Namespace) -> str:
    lines = [
        "# Flush: the final of a `flush` sent mid-speech",
        "",
        f"`{command('loadtest.flush')}` — {machine()}, {time.strftime('%Y-%m-%d %H:%M')}; "
        f"{'pauses squeezed out' if args.continuous else 'read speech with its pauses'}, a flush every "
        f"{args.every:.1f} s ±30 %. Goal: p95 ≤ {GOAL_P95_S:.1f} s.",
        "",
        "| sessions | flushes | answered | p50 | p95 | max | WER | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in levels:
        lines.append(f"| {v.sessions} | {v.flushes} | {v.answered} | {v.p50:.2f} s | {v.p95:.2f} s | {v.worst:.2f} s "
                     f"| {v.wer:.3f} | {v.errors} |")
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    levels = []
    with edge_url(args.url, "tolk-flush-") as url:
        for n in args.sessions:
            level = await run_level(url, n, args.seconds, args.every, args.continuous)
            print(f"sessions={n}: {level.answered}/{level.flushes} answered, p50/p95 {level.p50:.2f}/{level.p95:.2f} s,"
                  f" WER {level.wer:.3f}", flush=True)
            levels.append(level)
    save_report(args.name, render(levels, args), [asdict(v) for v in levels])
    worst = max((v.p95 for v in levels), default=float("nan"))
    print(f"flush p95={worst:.2f}s unanswered={sum(v.flushes - v.answered for v in levels)}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    p.add_argument("--seconds", type=float, default=60.0, help="audio per session")
    p.add_argument("--every", type=float, default=3.0, help="seconds between flushes (jittered ±30 %%)")
    p.add_argument("--continuous", action="store_true", help="squeeze the pauses out: every flush is mid-speech")
    p.add_argument("--url", default=None, help="benchmark a running edge instead of starting `tolk up`")
    p.add_argument("--name", default="flush", help="report name: loadtest/reports/<name>-latest.md")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
