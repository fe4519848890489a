"""Accuracy benchmark: streaming WER through a real `tolk up` against the same model offline.

    python -m loadtest.accuracy [--groups en multi] [--sessions 4] [--clips PREFIX ...]

Per language group (English on tiny.en; de/fr/es/pt on base), every dev-set clip is streamed as its own
microphone session at real-time pace, N sessions at once, through its own `tolk up`; then, in the same
run, faster-whisper's `transcribe()` with its defaults (beam 5, previous text as prompt, whole file) reads
the same clips with the same model and compute type. WER uses Whisper's normalisers (loadtest.wer);
the report has substitutions/deletions/insertions, the streaming/offline ratio per group and per-clip
rows, and is printed and saved under loadtest/reports/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from loadtest import plots
from loadtest.client import SessionRun, stream_pcm
from loadtest.mic import LEFT_OUTCOMES, command, machine, pct, save_report, start_tolk, stt_counter
from loadtest.speech import Clip, at_peak, clips
from loadtest.wer import Counts, counts

GOAL_RATIO = 1.05


@dataclass(frozen=True)
class Group:
    name: str
    model: str
    languages: tuple[str, ...]


GROUPS = {
    "en": Group("en", "tiny.en", ("en",)),
    "multi": Group("multi", "base", ("de", "fr", "es", "pt")),
}


@dataclass
class ClipRow:
    clip: str
    language: str
    genre: str
    seconds: float
    stream: Counts
    offline: Counts
    stream_text: str
    offline_text: str


@dataclass
class GroupResult:
    group: str
    model: str
    rows: list[ClipRow] = field(default_factory=list)
    final_latencies: list[float] = field(default_factory=list)
    errors: int = 0
    tiers: dict[str, float] = field(default_factory=dict)  # finals decoded per quality tier (STT metrics)
    left: dict[str, float] = field(default_factory=dict)  # final decodes by left context outcome (STT metrics)
    early: dict[str, float] = field(default_factory=dict)  # speculative segments by outcome (STT metrics)

    @property
    def stream(self) -> Counts:
        return sum((r.stream for r in self.rows), Counts())

    @property
    def offline(self) -> Counts:
        return sum((r.offline for r in self.rows), Counts())

    @property
    def ratio(self) -> float:
        return self.stream.wer / max(self.offline.wer, 1e-9)


async def stream_clips(url: str, cs: list[Clip], sessions: int, pace: float,
                       peak_dbfs: float | None = None) -> list[SessionRun]:
    gate = asyncio.Semaphore(sessions)

    async def one(i: int, c: Clip) -> SessionRun:
        async with gate:
            await asyncio.sleep(0.37 * (i % sessions))  # staggered like real users, not in lockstep
            pcm, rate = c.pcm16()
            return await stream_pcm(url, at_peak(pcm, peak_dbfs), rate, pace=pace, language=c.language, timeout=120)

    return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(cs))))


def offline(model: str, cs: list[Clip], peak_dbfs: float | None = None) -> list[str]:
    """faster-whisper's own transcribe() with its defaults, same model folder and compute type as Tolk."""
    from faster_whisper import WhisperModel

    from actors.runtime import settings
    from actors.stt.actor import SttSettings
    from actors.stt.models import resolve

    cfg = settings.load(SttSettings)
    path = resolve(model, cfg.model_cache)
    whisper = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=os.cpu_count() or 2)
    out = []
    for c in cs:
        pcm, rate = c.pcm16()
        assert rate == 16000, c.name
        audio = np.frombuffer(at_peak(pcm, peak_dbfs), "<i2").astype(np.float32) / 32768.0
        segments, _ = whisper.transcribe(audio, language=c.language if whisper.model.is_multilingual else None)
        out.append(" ".join(s.text.strip() for s in segments))
    return out


async def run_group(group: Group, cs: list[Clip], args: argparse.Namespace) -> GroupResult:
    result = GroupResult(group.name, group.model)
    with tempfile.TemporaryDirectory(prefix="tolk-accuracy-") as tmp:
        proc, url = start_tolk(Path(tmp), {"TOLK_MODEL": group.model})
        try:
            began = time.monotonic()
            runs = await stream_clips(url, cs, args.sessions, args.pace, args.peak_dbfs)
            print(f"[{group.name}] streamed {len(cs)} clips in {time.monotonic() - began:.0f} s", flush=True)
            result.tiers = stt_counter(Path(tmp), "tolk_stt_final_decodes_total", "tier")
            result.left = stt_counter(Path(tmp), "tolk_stt_left_context_total", "outcome")
            result.early = stt_counter(Path(tmp), "tolk_stt_speculative_total", "outcome")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=90)
    began = time.monotonic()
    texts = offline(group.model, cs, args.peak_dbfs) if not args.no_offline else [""] * len(cs)
    print(f"[{group.name}] offline transcribe() in {time.monotonic() - began:.0f} s", flush=True)
    for c, run, text in zip(cs, runs, texts, strict=True):
        result.rows.append(ClipRow(c.name, c.language, c.genre, c.seconds, counts(c.reference, run.text(), c.language),
                                   counts(c.reference, text, c.language), run.text(), text))
        result.final_latencies += run.final_latencies()
        result.errors += len(run.errors) + (not run.done)
    return result


def _cell(c: Counts) -> str:
    return f"{c.wer:.3f} ({c.substitutions}/{c.deletions}/{c.insertions})"


def render(results: list[GroupResult], args: argparse.Namespace, machine: str) -> str:
    lines = [
        "# Tolk accuracy benchmark: streaming vs offline Whisper",
        "",
        f"- command: `{command('loadtest.accuracy')}`",
        f"- machine: {machine}",
        f"- streaming: each clip is one session through `tolk up` at {args.pace:g}× real time, "
        f"{args.sessions} at once, `stop` right after the clip's last sample"
        + (f"; every clip (offline too) played with its peak at {args.peak_dbfs:g} dBFS" if args.peak_dbfs is not None
           else ""),
        "- offline: faster-whisper `transcribe()` defaults (beam 5, previous text as prompt, whole file), same model "
        "folder, CPU int8 as Tolk uses",
        "- WER: Whisper's normalisers (English / basic), jiwer alignment; cells are WER (substitutions/deletions/"
        "insertions)",
        "",
        "| group | model | clips | words | streaming WER | offline WER | ratio | deletions streaming / offline | "
        "final p50 / p95 (s) | errors | final decodes full / loaded / busy | "
        "left context read / dropped / load / none | early decodes made / used |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in results:
        s, o = g.stream, g.offline
        lines.append(
            f"| {g.group} | {g.model} | {len(g.rows)} | {s.words} | {_cell(s)} | {_cell(o)} | {g.ratio:.2f} | "
            f"{100 * s.deletions / max(1, s.words):.1f} % / {100 * o.deletions / max(1, o.words):.1f} % | "
            f"{pct(g.final_latencies, 50):.2f} / {pct(g.final_latencies, 95):.2f} | {g.errors} | "
            + " / ".join(f"{g.tiers.get(t, 0):.0f}" for t in ("full", "loaded", "busy")) + " | "
            + " / ".join(f"{g.left.get(o, 0):.0f}" for o in LEFT_OUTCOMES) + " | "
            + f"{g.early.get('decoded', 0):.0f} / {g.early.get('used', 0):.0f} |")
    lines += ["", "Per genre (read speech flatters a streaming recogniser; unscripted is how most users talk):", "",
              "| group | genre | clips | words | streaming WER (S/D/I) | offline WER (S/D/I) | ratio | goal |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for g in results:
        for genre in sorted({r.genre for r in g.rows}):
            rows = [r for r in g.rows if r.genre == genre]
            s = sum((r.stream for r in rows), Counts())
            o = sum((r.offline for r in rows), Counts())
            ratio = s.wer / max(o.wer, 1e-9)
            met = ratio <= GOAL_RATIO and s.insertions <= o.insertions and s.deletions <= o.deletions
            lines.append(f"| {g.group} | {genre} | {len(rows)} | {s.words} | {_cell(s)} | {_cell(o)} | {ratio:.2f} | "
                         f"{'met' if met else 'not met'} |")
    lines += ["", f"Goal: ratio ≤ {GOAL_RATIO}, insertions and deletions each no more than offline's, per group "
              "and genre. Final decodes: "
              "the quality tier the finals lane's load chose (early decodes included): full = beam 5 over 30 s, "
              "loaded = beam 5 over a fitted window, busy = greedy. Left context: decodes that read the end of "
              "the session's previous final / had it dropped by the engine (no room in the window, or redone "
              "without) / left it out for load / had none to read. Early decodes: speculative segments (a final's "
              "audio sent during the endpoint silence) decoded while the lane was idle / used by their final; the "
              "rest were pauses that did not end the utterance.", ""]
    for g in results:
        lines += [f"## {g.group} ({g.model})", "", "| clip | s | streaming | offline |", "|---|---:|---:|---:|"]
        for r in g.rows:
            lines.append(f"| {r.clip} | {r.seconds:.1f} | {_cell(r.stream)} | {_cell(r.offline)} |")
        lines.append("")
        worse = [r for r in g.rows if r.stream.errors > r.offline.errors]
        if worse:
            lines += ["Clips where streaming made more errors than offline:", ""]
            for r in worse:
                lines += [f"- **{r.clip}**", f"  - streaming: {r.stream_text}", f"  - offline: {r.offline_text}"]
            lines.append("")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    results = []
    for name in args.groups:
        group = GROUPS[name]
        cs = [c for c in clips() if c.language in group.languages
              and (not args.clips or any(c.name.startswith(p) for p in args.clips))]
        if not cs:
            continue
        if args.model:
            group = Group(group.name, args.model, group.languages)
        results.append(await run_group(group, cs, args))
    if not results:
        raise SystemExit("no clips match")
    summary = [{"group": g.group, "model": g.model, "stream": asdict(g.stream), "offline": asdict(g.offline),
                "ratio": g.ratio, "tiers": g.tiers, "left_context": g.left, "final_latencies": g.final_latencies,
                "rows": [asdict(r) for r in g.rows]}
               for g in results]
    save_report(args.name, render(results, args, machine()), summary)
    plots.accuracy_plots(args.name, results)  # after the report is saved; a chart that fails is one line on stderr
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", nargs="+", choices=sorted(GROUPS), default=["en", "multi"])
    p.add_argument("--sessions", type=int, default=4, help="sessions streaming at once")
    p.add_argument("--pace", type=float, default=1.0, help="1 = real time")
    p.add_argument("--clips", nargs="*", default=[], help="clip name prefixes (default: the whole dev set)")
    p.add_argument("--model", default=None, help="use this model for every group instead of tiny.en / base")
    p.add_argument("--peak-dbfs", type=float, default=None,
                   help="play every clip (streaming and offline) with its peak at this level, e.g. -50: a quiet mic")
    p.add_argument("--no-offline", action="store_true", help="skip the offline reference run")
    p.add_argument("--name", default="accuracy", help="report name: loadtest/reports/<name>-latest.md")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
