"""Fault scenario: SIGKILL an actor while sessions stream, then count what reached the clients.

    python -m loadtest.faults [--actors segmenter stt translator fanout] [--sessions 3] [--kill-at 3] [--pace 1]

For each actor in turn, `--sessions` clients stream real clips through a `tolk up` of its own; `--kill-at`
seconds in, the actor's process is killed with SIGKILL (no drain, nothing acked) and `tolk up` restarts it.
Per fault it reports the finals the pipeline stored for those sessions (expected), the ones clients got
(delivered), duplicates, missing ones, order, WER against the human transcripts, and recovery: from the
kill to the first final a client received that was made after it. Printed and saved under loadtest/reports/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from actors.runtime import pools
from loadtest.broadcast import free_port, start_tolk, wait_ready
from loadtest.client import SessionRun, stream_pcm
from loadtest.speech import Clip, clips
from loadtest.wer import corpus_wer

REPORTS = Path(__file__).resolve().parent / "reports"
CLIPS = ("en_jfk_inaugural_1961.wav", "en_fleurs_002_id1950.wav", "en_librispeech_2412-153948-0000.wav",
         "en_fleurs_000_id1904.wav")


@dataclass
class FaultResult:
    actor: str
    sessions: int
    expected: int = 0
    delivered: int = 0
    duplicated: int = 0
    missing: int = 0
    in_order: bool = True
    wer: float = 0.0
    recovery_s: float | None = None
    restarted: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.duplicated == 0 and self.missing == 0 and self.in_order and self.restarted


def actor_process(root: psutil.Process, actor: str) -> psutil.Process | None:
    """The child running `actor`; for stt, the one of the STT pool the (English) clips go to."""
    pool = pools.load().route("en").name
    for p in root.children(recursive=True):
        try:
            if f"actor {actor}" in " ".join(p.cmdline()) and p.environ().get(pools.ENV_POOL, pool) == pool:
                return p
        except psutil.Error:
            continue
    return None


def stored_finals(http: str, sid: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{http}/v1/sessions/{sid}/transcript?format=verbose_json", timeout=30) as resp:
        return list(json.loads(resp.read())["segments"])


async def inject(root: psutil.Process, actor: str, http: str, ws: str, picked: list[Clip], kill_at: float,
                 pace: float) -> FaultResult:
    """One fault: stream `picked` at once, SIGKILL `actor` `kill_at` seconds in, then account for every final."""
    out = FaultResult(actor, len(picked))
    victim = actor_process(root, actor)
    if victim is None:
        out.notes.append(f"no {actor} process found")
        return out
    killed_at = 0.0

    async def kill() -> None:
        nonlocal killed_at
        await asyncio.sleep(kill_at)
        killed_at = time.time()
        victim.send_signal(signal.SIGKILL)

    pcms = [c.pcm16() for c in picked]
    killer = asyncio.create_task(kill())
    runs: list[SessionRun] = await asyncio.gather(*(
        stream_pcm(ws, pcm, rate, pace=pace, timeout=180) for pcm, rate in pcms))
    await killer
    replacement = actor_process(root, actor)
    out.restarted = replacement is not None and replacement.pid != victim.pid
    after = [at for run in runs for r, at in zip(run.results, run.received_at, strict=True)
             if r["type"] == "final" and at - (r.get("latency_ms") or 0) / 1000 > killed_at]  # spoken after
    out.recovery_s = round(min(after) - killed_at, 1) if after else None
    pairs = []
    for clip, run in zip(picked, runs, strict=True):
        if not run.done:
            out.notes.append(f"{run.session_id or clip.name}: no `done` ({run.errors[-1:] or 'timeout'})")
        finals = [r for r in run.finals if r["text"]]
        seqs = [r["seq"] for r in run.results]
        out.in_order &= seqs == sorted(seqs)
        out.duplicated += len(seqs) - len(set(seqs))
        stored = [s["text"] for s in stored_finals(http, run.session_id)]
        got = [r["text"] for r in finals]
        out.expected += len(stored)
        out.delivered += sum(1 for t in got if t in stored)
        out.missing += len([t for t in stored if t not in got])
        pairs.append((clip.reference, " ".join(got)))
    out.wer = round(corpus_wer(pairs), 3)
    return out


async def run_faults(actors: list[str], sessions: int, kill_at: float, pace: float) -> list[FaultResult]:
    english = {c.name: c for c in clips("en")}
    picked = [english[n] for n in CLIPS[:sessions]]
    tmp = tempfile.TemporaryDirectory(prefix="tolk-faults-")
    port = free_port()
    proc = await asyncio.to_thread(start_tolk, Path(tmp.name), port, {})
    results = []
    try:
        root = psutil.Process(proc.pid)
        for actor in actors:
            results.append(await inject(root, actor, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/listen",
                                        picked, kill_at, pace))
            # The restarted actor is back before the next fault.
            if not await asyncio.to_thread(wait_ready, port, 120):
                raise SystemExit("tolk up did not recover")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 90)
        tmp.cleanup()
    return results


def report(results: list[FaultResult], argv: list[str]) -> str:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    rows = [f"| {r.actor} | {r.sessions} | {r.expected} | {r.delivered} | {r.duplicated} | {r.missing} | "
            f"{'yes' if r.in_order else 'NO'} | {r.wer} | {r.recovery_s if r.recovery_s is not None else '-'} | "
            f"{'yes' if r.restarted else 'NO'} | {'; '.join(r.notes) or ''} |" for r in results]
    return "\n".join([
        "# Tolk fault scenario", "",
        f"- command: `python -m loadtest.faults {' '.join(argv)}`",
        f"- machine: {machine}; `tolk up` (embedded NATS, tiny.en), real speech clips from the shared corpus",
        "- fault: SIGKILL of the actor's process mid-stream; `tolk up` restarts it with backoff", "",
        "| killed | sessions | finals expected | delivered | duplicated | missing | in order | WER | recovery (s) "
        "| restarted | notes |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|", *rows, "",
        "Expected: the finals the pipeline stored for those sessions (TOLK_RESULTS, each final once). Recovery: "
        "from the kill to the first final a client received for speech that ended after the kill.", "",
    ])


def main() -> None:
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--actors", nargs="+", default=["segmenter", "stt", "translator", "fanout"],
                   choices=["segmenter", "stt", "translator", "fanout"])
    p.add_argument("--sessions", type=int, default=3, choices=range(1, len(CLIPS) + 1))
    p.add_argument("--kill-at", type=float, default=3.0, help="seconds into the stream")
    p.add_argument("--pace", type=float, default=1.0, help="1 = real time")
    args = p.parse_args()
    results = asyncio.run(run_faults(args.actors, args.sessions, args.kill_at, args.pace))
    text = report(results, sys.argv[1:])
    print(text)
    REPORTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (REPORTS / f"faults-{stamp}.md").write_text(text)
    (REPORTS / "faults-latest.md").write_text(text)
    (REPORTS / f"faults-{stamp}.json").write_text(json.dumps([r.__dict__ for r in results], indent=1))
    if not all(r.ok for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
