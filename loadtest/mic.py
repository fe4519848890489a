"""Microphone benchmark: N concurrent real-time sessions of real speech through a real `tolk up`.

    python -m loadtest.mic --sessions 1 2 4 6 8 [--seconds 60] [--clips en_jfk ...] [--url ws://...]
    python -m loadtest.mic --continuous --sessions 1 6   # also the same speech with its pauses squeezed out

Each session streams a long "microphone" made of corpus clips (1 s of silence between them, a
different order per session) at real-time pace. Reports first-partial and final latency (p50/p95,
from the client's own clock: when the audio left it → when the text arrived), corpus WER, CPU and
RSS per actor process, and the largest N whose p95 final latency stays ≤ 2 s. The report is printed
and saved under loadtest/reports/.

`--continuous` runs every level twice: first as above (the paused original), then the same clips with every
pause over 150 ms squeezed out (`loadtest.speech.squeeze_pauses`, an energy gate like ffmpeg's
`silenceremove`; clips joined by 150 ms instead of 1 s): a presenter who never stops for the 500 ms endpoint.
It reports final latency per endpoint type (`silence`, `gap`, `max_duration`: from the final's `end` to its
arrival) and the continuous run's WER next to the paused run's. `--only-continuous` skips the paused pass.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from actors.runtime import pools
from loadtest import plots
from loadtest.client import SessionRun, stream_pcm
from loadtest.ports import free_port
from loadtest.speech import Clip, clips, squeeze_pauses
from loadtest.wer import corpus_wer

REPORTS = Path(__file__).resolve().parent / "reports"
GOAL_P95_FINAL_S = 2.0


@dataclass
class Row:
    sessions: int
    audio_s: float
    wer: float
    first_partial_p50: float
    first_partial_p95: float
    final_p50: float
    final_p95: float
    finals: int
    errors: int
    cpu: dict[str, float]  # % of one core, per actor
    rss_mib: dict[str, float]  # peak
    load: tuple[float, float] = (0.0, 0.0)  # the box's 1-minute load average before and after (shared machines)
    mode: str = "paused"  # or "continuous": pauses over 150 ms squeezed out
    by_endpoint: dict[str, list[float]] | None = None  # final latencies (s) per endpoint type
    stt: dict[str, float] | None = None  # STT counters over the level, summed over pools (stt_totals)
    first_partials: list[float] | None = None  # first-partial latencies (s), for the CDF (loadtest.plots)
    refused: int = 0  # sessions refused `overloaded` at start (admission: --admit-final-busy); not in the rest


def command(module: str) -> str:
    """The command line as a report shows it: the TOLK_* settings it ran under first, so it can be rerun."""
    env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("TOLK_"))
    return f"{env + ' ' if env else ''}python -m {module} {' '.join(sys.argv[1:])}".rstrip()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def mic_stream(cs: list[Clip], offset: int, seconds: float, continuous: bool = False) -> tuple[bytes, str]:
    """Clips in rotated order, joined with 1 s of silence, until `seconds` of audio (of the paused original).

    `continuous`: the same clips, each with its pauses over 150 ms squeezed out, joined by 150 ms.
    """
    parts: list[bytes] = []
    refs: list[str] = []
    total = 0.0
    i = offset
    while total < seconds:
        c = cs[i % len(cs)]
        pcm, rate = c.pcm16()
        assert rate == 16000
        if continuous:
            parts += [squeeze_pauses(np.frombuffer(pcm, "<i2")).tobytes(), b"\x00\x00" * 2400]
        else:
            parts += [pcm, b"\x00\x00" * 16000]
        refs.append(c.reference)
        total += c.seconds + 1
        i += 1
    return b"".join(parts), " ".join(refs)


class ActorSampler:
    """CPU and peak RSS per actor process of a `tolk up` tree, sampled once a second."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.peak: dict[str, float] = {}
        self.cpu0: dict[int, tuple[str, float]] = {}
        self.t0 = 0.0
        self._task: asyncio.Task[None] | None = None

    def procs(self) -> dict[str, psutil.Process]:
        out = {}
        for p in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                cmd = p.cmdline()
                name = cmd[cmd.index("actor") + 1] if "actor" in cmd else (
                    "nats-server" if "nats-server" in " ".join(cmd[:1]) else "supervisor")
                if name == "stt" and p.environ().get("TOLK_STT_POOL"):  # one STT process per pool
                    name = f"stt-{p.environ()['TOLK_STT_POOL']}"
                out[name] = p
        return out

    def start(self) -> None:
        self.t0 = time.monotonic()
        for name, p in self.procs().items():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                self.cpu0[p.pid] = (name, t.user + t.system)
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            for name, p in self.procs().items():
                with contextlib.suppress(psutil.Error):
                    self.peak[name] = max(self.peak.get(name, 0.0), p.memory_info().rss / 2**20)
            await asyncio.sleep(1.0)

    async def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        wall = time.monotonic() - self.t0
        cpu = {}
        for p in self.procs().values():
            with contextlib.suppress(psutil.Error):
                if p.pid in self.cpu0:
                    name, before = self.cpu0[p.pid]
                    t = p.cpu_times()
                    cpu[name] = round(100 * (t.user + t.system - before) / wall, 1)
        return cpu, {k: round(v, 1) for k, v in self.peak.items()}


async def run_level(url: str, n: int, cs: list[Clip], seconds: float, sampler: ActorSampler | None,
                    targets: list[str] | None = None, continuous: bool = False, data: Path | None = None,
                    start_fields: dict[str, Any] | None = None) -> Row:
    streams = [mic_stream(cs, i * 3, seconds, continuous) for i in range(n)]

    async def one(i: int) -> SessionRun:
        await asyncio.sleep(i * 0.37)  # staggered like real users, not in lockstep
        pcm, _ = streams[i]
        return await stream_pcm(url, pcm, 16000, pace=1.0, timeout=120, targets=targets, start_fields=start_fields)

    if sampler:
        sampler.start()
    load0 = os.getloadavg()[0]
    stt0 = await asyncio.to_thread(stt_totals, data) if data else {}
    began = time.monotonic()
    runs = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.monotonic() - began
    cpu, rss = await sampler.stop() if sampler else ({}, {})
    stt1 = await asyncio.to_thread(stt_totals, data) if data else {}
    stt = {k: round(v - stt0.get(k, 0.0), 2) for k, v in stt1.items()} | {"wall_s": round(wall, 1)} if data else None
    refused = [i for i, r in enumerate(runs) if any(e.get("code") == "overloaded" for e in r.errors)]
    kept = [i for i in range(n) if i not in refused]
    runs = [runs[i] for i in kept]
    streams = [streams[i] for i in kept]
    finals = [x for r in runs for x in r.final_latencies()]
    firsts = [x for r in runs for x in r.first_partial_latencies()]
    by_endpoint: dict[str, list[float]] = {}
    for r in runs:
        for kind, xs in r.final_latencies_by_endpoint().items():
            by_endpoint.setdefault(kind, []).extend(round(x, 3) for x in xs)
    return Row(
        sessions=n,
        audio_s=round(sum(len(s[0]) / 32000 for s in streams), 1),
        wer=round(corpus_wer([(ref, r.text()) for (_, ref), r in zip(streams, runs, strict=True)]), 4)
        if runs else float("nan"),
        first_partial_p50=round(pct(firsts, 50), 3), first_partial_p95=round(pct(firsts, 95), 3),
        final_p50=round(pct(finals, 50), 3), final_p95=round(pct(finals, 95), 3),
        finals=len(finals), errors=sum(len(r.errors) + (not r.done) for r in runs),
        cpu=cpu, rss_mib=rss, load=(round(load0, 1), round(os.getloadavg()[0], 1)),
        mode="continuous" if continuous else "paused", by_endpoint=by_endpoint, stt=stt,
        first_partials=[round(x, 3) for x in firsts], refused=len(refused),
    )


ENDPOINTS = ("silence", "gap", "max_duration", "stop")
LEFT_OUTCOMES = ("read", "dropped", "load", "none")  # tolk_stt_left_context_total{outcome}


def render_endpoints(rows: list[Row]) -> list[str]:
    """Final latency per endpoint type, paused vs continuous input, and WER of each."""
    lines = [
        "Final latency per endpoint type (from the final's `end` to its arrival, client clock): "
        "p50 / p95 / max in seconds (count). `silence`: ended by a pause (the pause included); `gap`: continuous "
        "speech past TOLK_SOFT_MAX_S (default 10 s) cut at its first short gap; `max_duration`: no gap, cut at the "
        "cap; `stop` waits for the client's stop and is not a latency.",
        "",
        "| sessions | input | WER | finals | " + " | ".join(f"`{e}`" for e in ENDPOINTS) + " | load avg |",
        "|---:|---|---:|---:|" + "---|" * len(ENDPOINTS) + "---|",
    ]
    for r in rows:
        cells = []
        for e in ENDPOINTS:
            xs = (r.by_endpoint or {}).get(e, [])
            if not xs:
                cells.append("—")
            elif e == "stop":
                cells.append(f"({len(xs)})")
            else:
                cells.append(f"{pct(xs, 50):.2f} / {pct(xs, 95):.2f} / {max(xs):.2f} ({len(xs)})")
        total = sum(len(v) for v in (r.by_endpoint or {}).values())
        lines.append(f"| {r.sessions} | {r.mode} | {r.wer:.3f} | {total} | " + " | ".join(cells)
                     + f" | {r.load[0]:.1f} → {r.load[1]:.1f} |")
    pairs = {(r.sessions, r.mode): r for r in rows}
    for n in sorted({r.sessions for r in rows}):
        if (n, "paused") in pairs and (n, "continuous") in pairs:
            d = pairs[(n, "continuous")].wer - pairs[(n, "paused")].wer
            lines.append(f"\n{n} session(s): continuous WER − paused WER = {d:+.3f}")
    return lines


def start_tolk(data: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """A `tolk up` for a benchmark. Admission by measured capacity is off unless `env` sets it: a benchmark
    measures every session it starts (loadtest.mic --admit-final-busy measures admission itself)."""
    port = free_port()
    env = {"TOLK_ADMIT_FINAL_BUSY": "0", **env}
    log = open(data / "tolk-up.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "tolk"), "up", "--data-dir", str(data), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, f"ws://127.0.0.1:{port}/v1/listen"
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"tolk up did not become ready; see {data / 'tolk-up.log'}")


@contextlib.contextmanager
def edge_url(url: str | None, prefix: str) -> Iterator[str]:
    """`url` when a running edge is benchmarked, else a `tolk up` of the benchmark's own for as long as it runs
    (stopped with SIGTERM, its data removed)."""
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        proc, ws = start_tolk(Path(tmp), {})
        try:
            yield ws
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=90)


def stt_scrapes(data: Path) -> list[tuple[dict[str, Any], str]]:
    """Each ready STT process of the `tolk up` in `data`: its heartbeat (as `tolk status --json` lists it) and
    its /metrics text. A process gone between the two reads is left out."""
    out = subprocess.run([str(Path(sys.executable).parent / "tolk"), "status", "--json", "--data-dir", str(data)],
                         capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"tolk status failed: {out.stderr}")
    scrapes = []
    for a in json.loads(out.stdout)["actors"]:
        if a["actor"] == "stt" and a["ready"] and a["metrics_port"]:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{a['metrics_port']}/metrics", timeout=5) as resp:
                scrapes.append((a, resp.read().decode()))
    return scrapes


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of one metric's samples in a /metrics text whose labels include `labels`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def stt_counter(data: Path, name: str, label: str) -> dict[str, float]:
    """One STT counter summed over every STT process of the `tolk up` in `data`, by one label's value."""
    totals: dict[str, float] = {}
    for _, text in stt_scrapes(data):
        for line in text.splitlines():
            if line.startswith(name + "{") and f'{label}="' in line:
                value = line.split(f'{label}="', 1)[1].split('"', 1)[0]
                totals[value] = totals.get(value, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def stt_totals(data: Path) -> dict[str, float]:
    """What the STT lanes did, summed over processes: model-call and audio seconds per lane, early decodes by
    outcome, finals by quality tier. Differences of two readings tell where a level's CPU went."""
    wanted = [(f"{kind}_{key}", name, {"kind": kind}) for kind in ("final", "partial") for key, name in (
        ("busy", "tolk_stt_busy_seconds_total"), ("audio", "tolk_stt_audio_seconds_total"),
        ("calls", "tolk_stt_batch_size_count"))]
    wanted += [(f"early_{o}", "tolk_stt_speculative_total", {"outcome": o}) for o in ("decoded", "used", "skipped")]
    wanted += [(f"tier_{t}", "tolk_stt_final_decodes_total", {"tier": t}) for t in ("full", "loaded", "busy")]
    wanted += [(f"left_{o}", "tolk_stt_left_context_total", {"outcome": o}) for o in LEFT_OUTCOMES]
    totals = dict.fromkeys((key for key, _, _ in wanted), 0.0)
    for _, text in stt_scrapes(data):
        for key, name, labels in wanted:
            totals[key] += metric_sum(text, name, **labels)
    return totals


def render_stt(rows: list[Row]) -> list[str]:
    """Where the STT's time went per level: each lane's utilisation (model-call seconds / wall) and real-time
    factor, early decodes, and the finals' quality tiers."""
    lines = ["STT lanes (all pools): utilisation = model-call seconds / wall; RTF = model seconds per audio second; "
             "early decodes decoded / used by their final / skipped; finals by tier full / loaded / busy; left "
             "context read / dropped by the engine (no room, or redone without) / left out for load / none to "
             "read.", "",
             "| sessions | final lane: util, calls, RTF | partial lane: util, calls, RTF | early decodes | tiers "
             "| left context |",
             "|---:|---|---|---|---|---|"]
    for r in rows:
        s = r.stt
        if not s:
            continue
        cells = []
        for kind in ("final", "partial"):
            busy, audio, calls = s.get(f"{kind}_busy", 0), s.get(f"{kind}_audio", 0), s.get(f"{kind}_calls", 0)
            cells.append(f"{busy / s['wall_s']:.0%}, {calls:.0f}, {busy / max(audio, 1e-9):.3f}")
        cells.append(" / ".join(f"{s.get(f'early_{o}', 0):.0f}" for o in ("decoded", "used", "skipped")))
        cells.append(" / ".join(f"{s.get(f'tier_{t}', 0):.0f}" for t in ("full", "loaded", "busy")))
        cells.append(" / ".join(f"{s.get(f'left_{o}', 0):.0f}" for o in LEFT_OUTCOMES))
        lines.append(f"| {r.sessions}{' (continuous)' if r.mode == 'continuous' else ''} | " + " | ".join(cells)
                     + " |")
    return lines


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"


def save_report(name: str, report: str, data: object) -> None:
    """Print the report; save it (and its data as JSON) under loadtest/reports/ as <name>-<stamp> and -latest.

    The JSON (git-ignored) keeps the raw latencies, from which `python -m loadtest.plots` draws true CDFs."""
    print("\n" + report)
    REPORTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (REPORTS / f"{name}-{stamp}.md").write_text(report)
    (REPORTS / f"{name}-latest.md").write_text(report)
    (REPORTS / f"{name}-{stamp}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False))


def render(rows: list[Row], args: argparse.Namespace, machine: str) -> str:
    held = [r.sessions for r in rows if r.final_p95 <= GOAL_P95_FINAL_S and r.errors == 0]
    actors = sorted({k for r in rows for k in r.cpu} | {k for r in rows for k in r.rss_mib})
    lines = [
        "# Tolk microphone benchmark",
        "",
        f"- command: `{command('loadtest.mic')}`",
        f"- machine: {machine}",
        f"- STT pools: `{pools.load().spec}` (English: {pools.load().route('en').model}); each session streams "
        f"≈{args.seconds:.0f} s of real "
        "speech at real-time pace" + (f", translated into {', '.join(args.targets)}" if args.targets else ""),
        "- latency is client-side: audio leaving the client → text arriving (final: from the end of speech, so it "
        f"includes the {endpoint_of(args)} endpoint silence)",
        "",
        "| sessions | refused | WER | first partial p50 / p95 (s) | final p50 / p95 (s) | finals | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.sessions}{' (continuous)' if r.mode == 'continuous' else ''} | {r.refused} | "
                     f"{r.wer:.3f} | {r.first_partial_p50:.2f} / {r.first_partial_p95:.2f} | "
                     f"{r.final_p50:.2f} / {r.final_p95:.2f} | {r.finals} | {r.errors} |")
    lines += ["", "CPU (% of one core) and peak RSS (MiB) per process:", "",
              "| sessions | " + " | ".join(actors) + " |", "|---:|" + "---:|" * len(actors)]
    for r in rows:
        cells = [f"{r.cpu.get(a, 0):.0f}% / {r.rss_mib.get(a, 0):.0f}" for a in actors]
        lines.append(f"| {r.sessions}{' (continuous)' if r.mode == 'continuous' else ''} | " + " | ".join(cells)
                     + " |")
    lines += ["", f"Largest N with p95 final ≤ {GOAL_P95_FINAL_S:.0f} s and no errors: "
              f"**{max(held) if held else 'none'}**", ""]
    if any(r.stt for r in rows):
        lines += [*render_stt(rows), ""]
    if any(r.mode == "continuous" for r in rows) or session_fields(args):
        lines += [*render_endpoints(rows), ""]
    return "\n".join(lines)


def session_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The per-session endpointing `--endpoint-ms` / `--max-utterance-s` (and `--diarize`) put in every `start`."""
    out: dict[str, Any] = {}
    if args.endpoint_ms is not None:
        out["endpoint_ms"] = False if str(args.endpoint_ms).lower() == "false" else int(args.endpoint_ms)
    if args.max_utterance_s is not None:
        out["max_utterance_s"] = args.max_utterance_s
    if args.language != "en":
        out["language"] = args.language
    if getattr(args, "diarize", False):
        out["diarize"] = True
    return out


def endpoint_of(args: argparse.Namespace) -> str:
    endpoint = session_fields(args).get("endpoint_ms")
    return "500 ms (the server's)" if endpoint is None else "no" if endpoint is False else f"session's {endpoint} ms"


async def wait_served(url: str, language: str, targets: list[str], timeout: float = 90.0) -> None:
    """Until GET /v1/languages serves every target from `language` (a stack just up: the translator lists Whisper's
    pairs once it has read STT's heartbeat, and STT reads the catalog back within TOLK_SPEECH_TRANSLATE_POLL_S)."""
    import aiohttp

    from schemas import TranslationCatalog, TranslationPair
    from schemas.translation import unserved

    http = url.replace("ws://", "http://").replace("wss://", "https://").removesuffix("/v1/listen")
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"{http}/v1/languages") as resp:
                body = await resp.json() if resp.status == 200 else {"pairs": []}
            pairs = tuple(TranslationPair(**{k: p[k] for k in ("source", "target", "engine", "available", "pivot")})
                          for p in body.get("pairs", []))
            catalogs = [TranslationCatalog(pairs=pairs)] if pairs else []
            if catalogs and all(unserved(catalogs, language, t) is None for t in targets):
                await asyncio.sleep(6.0)
                return
            await asyncio.sleep(1.0)
    print(f"warning: {language}→{targets} not served after {timeout:.0f} s", file=sys.stderr)


async def main_async(args: argparse.Namespace) -> int:
    wanted = args.clips
    cs = [c for c in clips(args.language) if not wanted or any(c.name.startswith(p) for p in wanted)]
    if not cs:
        raise SystemExit("no clips match")
    proc = None
    tmp = None
    url = args.url
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="tolk-bench-")
        env = {"TOLK_MODEL": args.model} if args.model else {}
        if args.admit_final_busy is not None:
            env["TOLK_ADMIT_FINAL_BUSY"] = str(args.admit_final_busy)
        proc, url = start_tolk(Path(tmp.name), env)
    rows = []
    try:
        if args.targets:
            await wait_served(url, args.language, args.targets)
        modes = [False] if not (args.continuous or args.only_continuous) else \
            [True] if args.only_continuous else [False, True]
        for n in args.sessions:
            for continuous in modes:
                sampler = ActorSampler(proc.pid) if proc else None
                row = await run_level(url, n, cs, args.seconds, sampler, args.targets, continuous,
                                      Path(tmp.name) if tmp else None, session_fields(args))
                print(f"sessions={n} {row.mode}: WER {row.wer:.3f}, final p50/p95 {row.final_p50:.2f}/"
                      f"{row.final_p95:.2f} s, first partial p50/p95 {row.first_partial_p50:.2f}/"
                      f"{row.first_partial_p95:.2f} s, by endpoint "
                      f"{ {k: (len(v), round(pct(v, 95), 2)) for k, v in (row.by_endpoint or {}).items()} }",
                      flush=True)
                rows.append(row)
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=90)
        if tmp:
            tmp.cleanup()
    save_report(args.name, render(rows, args, machine()), [asdict(r) for r in rows])
    plots.mic_plots(args.name, rows)  # after the report is saved; a chart that fails is one line on stderr
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    p.add_argument("--seconds", type=float, default=60.0, help="audio per session")
    p.add_argument("--clips", nargs="*", default=[], help="clip name prefixes (default: every English clip)")
    p.add_argument("--url", default=None, help="benchmark a running edge instead of starting `tolk up`")
    p.add_argument("--targets", nargs="*", default=[], help="translate every session into these languages")
    p.add_argument("--language", default="en", help="the corpus clips' language, and every session's `language`")
    p.add_argument("--model", default="", help="TOLK_MODEL of the stack started (e.g. base for --language de)")
    p.add_argument("--name", default="mic", help="report name: loadtest/reports/<name>-latest.md")
    p.add_argument("--continuous", action="store_true",
                   help="run each level paused and then with pauses over 150 ms squeezed out; latency per endpoint")
    p.add_argument("--only-continuous", action="store_true", help="only the squeezed pass")
    p.add_argument("--endpoint-ms", default=None,
                   help="every session's `endpoint_ms` (ms, or false: no silence endpoint); default: the server's")
    p.add_argument("--max-utterance-s", type=float, default=None, help="every session's `max_utterance_s`")
    p.add_argument("--diarize", action="store_true", help="speaker labels on every session (issue #34's cost)")
    p.add_argument("--admit-final-busy", type=float, default=None,
                   help="admission by measured capacity (TOLK_ADMIT_FINAL_BUSY) in the stack started; default off, "
                   "so every session is measured; refused sessions are counted, not measured")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
