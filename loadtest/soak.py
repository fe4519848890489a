"""Soak: Tolk over time, with sessions coming and going, watching for anything that grows without bound.

    python -m loadtest.soak [--minutes 30] [--sessions 6] [--listeners 200] [--sample-s 30]

Starts `tolk up` with one real broadcast channel (`soak`: a clip on repeat through ingest → STT → fan-out).
`--sessions` microphone workers each stream real speech at real-time pace in sessions of 30–120 s, then start a
new one, all along; `--listeners` channel listeners each stay 1–5 minutes, then reconnect (with `after`, as the
page does). Every `--sample-s` seconds it records each process's RSS and open file descriptors, every
JetStream stream's and KV bucket's size, and every durable consumer's lag (pending + unacked).

It fails (exit 1) if, over the second half of the run (a fitted slope):
- a process's RSS grows (> 0.5 MiB/min and > 5 % over the half) or its descriptors do (> 0.2/min and > 10);
- a stream or bucket grows while it should have levelled off (its max age or TTL is shorter than half the run),
  or its growth rate times its max age would pass its max_bytes (it would discard data before it ages out);
- a consumer's lag grows (> 10 messages over the half, and more than its own jitter: twice the spread around
  the fitted line);
- a final is lost (a microphone utterance with a partial but no final, a session without `done`, an error; a
  listener missing a channel final stored while it was subscribed);
- p95 final latency drifts up (last third's p95 > 1.5 × the first third's + 0.3 s).

The report (tables per sample, fits, verdicts) is printed and saved under loadtest/reports/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

from loadtest.broadcast import free_port, radio_mp3, serve_radio, start_tolk
from loadtest.client import stream_pcm
from loadtest.mic import ActorSampler, command, machine, mic_stream, save_report
from loadtest.speech import clips
from loadtest.storm import Listener, listen


@dataclass
class Sample:
    t: float  # seconds since the start
    rss_mib: dict[str, float]
    fds: dict[str, int]
    stream_bytes: dict[str, int]
    stream_msgs: dict[str, int]
    lag: dict[str, int]
    sessions_done: int
    finals: int


@dataclass
class Tally:
    sessions: int = 0
    finals: int = 0
    lost: list[str] = field(default_factory=list)  # what went wrong, one line each
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (arrival since start, seconds)


async def nats_sizes(bus: Any) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Bytes and messages of every stream (KV buckets are streams `KV_<bucket>`), lag of every durable."""
    sizes: dict[str, int] = {}
    msgs: dict[str, int] = {}
    lag: dict[str, int] = {}
    for info in await bus.js.streams_info():
        name = info.config.name
        sizes[name], msgs[name] = info.state.bytes, info.state.messages
        if name.startswith("KV_"):
            continue
        for c in await bus.js.consumers_info(name):
            if c.config.durable_name:
                lag[f"{name}/{c.name}"] = (c.num_pending or 0) + (c.num_ack_pending or 0)
    return sizes, msgs, lag


async def mic_worker(url: str, i: int, stop: asyncio.Event, t0: float, tally: Tally,
                     length: tuple[float, float] = (30, 120)) -> None:
    """Sessions of 30–120 s (`length`) of real speech, one after another, until `stop`."""
    cs = clips("en")
    rng = random.Random(i)
    n = 0
    await asyncio.sleep(i * 2.3)  # staggered
    while not stop.is_set():
        n += 1
        pcm, _ = mic_stream(cs, rng.randrange(len(cs)), rng.uniform(*length))
        run = await stream_pcm(url, pcm, 16000, pace=1.0, timeout=120, session_id=f"soak{i}-{n}")
        tally.sessions += 1
        spoke = {r["utterance_id"] for r in run.partials}
        finished = {r["utterance_id"] for r in run.finals}
        tally.finals += len(run.finals)
        if not run.done or run.errors:
            tally.lost.append(f"session soak{i}-{n}: done={run.done} errors={run.errors[:2]}")
        if spoke - finished:
            tally.lost.append(f"session soak{i}-{n}: utterances {sorted(spoke - finished)} had partials, no final")
        for x, at in zip(run.final_latencies(), [a for r, a in zip(run.results, run.received_at, strict=True)
                                                   if r["type"] == "final" and r["text"]
                                                   and (r.get("endpoint") or "") == "silence"], strict=True):
            tally.latencies.append((at - t0, x))
        await asyncio.sleep(rng.uniform(1, 3))


async def listener_worker(http: aiohttp.ClientSession, url: str, me: Listener, rng: random.Random,
                          stop: asyncio.Event, spans: list[tuple[float, float]]) -> None:
    """Stays 1–5 minutes, leaves, comes back (with `after`: nothing missed, nothing twice), until `stop`."""
    await asyncio.sleep(rng.uniform(0, 20))
    while not stop.is_set():
        began = time.time()
        task = asyncio.create_task(listen(http, url, me))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(60, 300))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        spans.append((me.subscribed_at[-1] if me.subscribed_at and me.subscribed_at[-1] >= began else began,
                      time.time()))
        if not stop.is_set():
            await asyncio.sleep(rng.uniform(1, 10))


def slope_per_min(ts: list[float], ys: list[float]) -> float:
    if len(ts) < 3 or len(set(ts)) < 2:
        return 0.0
    return float(np.polyfit(np.array(ts) / 60, np.array(ys, dtype=float), 1)[0])


def noise(ts: list[float], ys: list[float]) -> float:
    """Twice the spread around the fitted line: a rise smaller than this is the series' own jitter (a
    consumer's lag jumps by a hundred messages and back between two samples)."""
    if len(ts) < 3 or len(set(ts)) < 2:
        return 0.0
    x, y = np.array(ts) / 60, np.array(ys, dtype=float)
    fit = np.polyval(np.polyfit(x, y, 1), x)
    return float(2 * np.std(y - fit))


def verdicts(samples: list[Sample], limits: dict[str, dict[str, float]], minutes: float) -> list[tuple[str, str, bool]]:
    """(what, the figure, ok) for every series over the second half."""
    half = [s for s in samples if s.t >= samples[-1].t / 2]
    ts = [s.t for s in half]
    out: list[tuple[str, str, bool]] = []
    for name in sorted(half[-1].rss_mib):
        ys = [s.rss_mib.get(name, float("nan")) for s in half]
        k = slope_per_min(ts, ys)
        grew = ys[-1] - ys[0]
        out.append((f"{name} RSS", f"{ys[-1]:.0f} MiB, {k:+.2f} MiB/min",
                    not (k > 0.5 and grew > 0.05 * ys[0] and k * (ts[-1] - ts[0]) / 60 > noise(ts, ys))))
        fs = [float(s.fds.get(name, 0)) for s in half]
        kf = slope_per_min(ts, fs)
        out.append((f"{name} fds", f"{fs[-1]:.0f}, {kf:+.2f}/min", not (kf > 0.2 and fs[-1] - fs[0] > 10)))
    span_min = (ts[-1] - ts[0]) / 60 if len(ts) > 1 else 0.0
    for name in sorted(half[-1].stream_bytes):
        ys = [float(s.stream_bytes.get(name, 0)) for s in half]
        k = slope_per_min(ts, ys)  # bytes/min
        lim = limits.get(name, {})
        age_min = lim.get("max_age_s", 0) / 60
        cap = lim.get("max_bytes", -1)
        if age_min and age_min <= minutes / 2:  # should have levelled off by now
            ok = k * span_min <= max(0.1 * max(ys), 64 * 1024)
            why = f"levels off (max age {age_min:.0f} min)"
        elif age_min:  # still filling: where it levels off at this rate
            plateau = k * age_min
            ok = cap < 0 or plateau <= cap
            why = f"levels off at ≈ {max(plateau, 0) / 2**20:.1f} MiB after {age_min:.0f} min" + (
                f" (max_bytes {cap / 2**20:.0f} MiB)" if cap > 0 else "")
        else:
            ok = k * span_min <= max(0.1 * max(ys), 64 * 1024)
            why = "no max age: must not grow"
        out.append((f"{name} bytes", f"{ys[-1] / 2**20:.2f} MiB, {k / 1024:+.1f} KiB/min; {why}", ok))
    for name in sorted(half[-1].lag):
        ys = [float(s.lag.get(name, 0)) for s in half]
        k = slope_per_min(ts, ys)
        grows = k * span_min > max(10.0, noise(ts, ys))
        out.append((f"{name} lag", f"{ys[-1]:.0f} now, max {max(ys):.0f}, {k:+.2f}/min", not grows))
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from actors.runtime import channels, permissions
    from actors.runtime.bus import Bus, NatsAuth
    from actors.runtime.topology import load
    from schemas import ClientResult, decode

    radio_port, port = free_port(), free_port()
    runner = await serve_radio(radio_port, radio_mp3("jfk"))
    tmp = tempfile.TemporaryDirectory(prefix="tolk-soak-")
    data = Path(tmp.name)
    config = {"channels": [{"name": "soak", "url": f"http://127.0.0.1:{radio_port}/soak.mp3", "language": "en"}]}
    proc = await asyncio.to_thread(start_tolk, data, port, {"TOLK_CHANNELS": json.dumps(config)})
    nats_url = str(json.loads(next((data / "run").glob("*.ports")).read_text())["nats"][0])
    password = permissions.local_password(data)
    bus = await Bus.connect(nats_url, "soak", auth=NatsAuth(nats_user=permissions.ADMIN, nats_password=password)
                            if password else None)
    topo = load()
    limits = {s.name: {"max_age_s": s.max_age_s, "max_bytes": float(s.max_bytes)} for s in topo.streams}
    limits |= {f"KV_{b.bucket}": {"max_age_s": b.ttl_s, "max_bytes": -1.0} for b in topo.kv}
    stored: list[tuple[float, tuple[str, int]]] = []  # the channel's finals as fan-out stores them

    async def on_caption(msg: Any) -> None:
        r = decode(msg.data, ClientResult)
        stored.append((time.time(), (r.session_id, r.seq)))

    await bus.nc.subscribe(channels.captions_subject(channels.stream_id("soak")), cb=on_caption)
    url = f"ws://127.0.0.1:{port}/v1/listen"
    stop = asyncio.Event()
    tally = Tally()
    t0 = time.time()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    everyone = [Listener("soak") for _ in range(args.listeners)]
    spans: list[list[tuple[float, float]]] = [[] for _ in everyone]
    length = (args.session_s[0], args.session_s[1])
    tasks = [asyncio.create_task(mic_worker(url, i, stop, t0, tally, length)) for i in range(args.sessions)]
    tasks += [asyncio.create_task(listener_worker(http, url, me, random.Random(1000 + i), stop, spans[i]))
              for i, me in enumerate(everyone)]
    samples: list[Sample] = []
    try:
        while time.time() - t0 < args.minutes * 60:
            procs = ActorSampler(proc.pid).procs()
            rss, fds = {}, {}
            for name, p in procs.items():
                with contextlib.suppress(psutil.Error):
                    rss[name] = round(p.memory_info().rss / 2**20, 1)
                    fds[name] = p.num_fds()
            sizes, msgs, lag = await nats_sizes(bus)
            samples.append(Sample(round(time.time() - t0, 1), rss, fds, sizes, msgs, lag, tally.sessions,
                                  tally.finals))
            s = samples[-1]
            print(f"[{s.t / 60:5.1f} min] sessions {s.sessions_done}, finals {s.finals}, "
                  f"RSS {sum(rss.values()):.0f} MiB, fds {sum(fds.values())}, lag {sum(lag.values())}", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.sample_s)
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=args.session_s[1] + 30)  # sessions under way finish
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.close()
        await bus.close()
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 90)
        await runner.cleanup()
        tmp.cleanup()
    missing = 0
    for me, sp in zip(everyone, spans, strict=True):
        seen = set(me.seen)
        for began, ended in sp:  # stored while it was subscribed (a 2 s margin at each end): it must have it
            missing += sum(1 for at, key in stored if began + 2 < at < ended - 2 and key not in seen)
    dups = sum(c - 1 for me in everyone for c in me.seen.values())
    if missing:
        tally.lost.append(f"listeners: {missing} stored channel finals never reached a listener subscribed then")
    if dups:
        tally.lost.append(f"listeners: {dups} channel finals received twice")
    lat = tally.latencies
    third = args.minutes * 20  # seconds
    thirds = [sorted(x for at, x in lat if lo * third <= at < (lo + 1) * third) for lo in range(3)]
    p95s = [float(np.percentile(x, 95)) if x else float("nan") for x in thirds]
    return {"samples": [s.__dict__ for s in samples], "limits": limits, "lost": tally.lost,
            "sessions": tally.sessions, "finals": tally.finals, "p95_by_third": p95s,
            "channel_finals": len(stored), "listener_reconnects": sum(len(sp) for sp in spans),
            "listener_missing": missing, "listener_duplicates": dups,
            "verdicts": verdicts(samples, limits, args.minutes) if len(samples) >= 4 else []}


def render(row: dict[str, Any], args: argparse.Namespace) -> tuple[str, bool]:
    samples = row["samples"]
    p95s = row["p95_by_third"]
    drift_ok = not (p95s[2] == p95s[2] and p95s[0] == p95s[0] and p95s[2] > 1.5 * p95s[0] + 0.3)
    ok = bool(row["verdicts"]) and all(v[2] for v in row["verdicts"]) and not row["lost"] and drift_ok
    procs = sorted(samples[-1]["rss_mib"])
    lines = [
        "# Tolk soak", "",
        f"- command: `{command('loadtest.soak')}`",
        f"- machine: {machine()}; clients and `tolk up` on the same box",
        f"- {args.minutes:g} min: {args.sessions} microphone workers (sessions of {args.session_s[0]:g}–"
        f"{args.session_s[1]:g} s of real speech, one after "
        f"another: {row['sessions']} sessions, {row['finals']} finals), {args.listeners} listeners of one real "
        f"channel (1–5 min each, then back with `after`: {row['listener_reconnects']} joins; "
        f"{row['channel_finals']} channel finals)", "",
        "## Verdicts (second half, fitted slope)", "",
        "| series | figure | ok |", "|---|---|---|",
        *[f"| {what} | {fig} | {'yes' if good else '**NO**'} |" for what, fig, good in row["verdicts"]],
        f"| final p95 by third (silence endpoints) | {' / '.join(f'{x:.2f}' for x in p95s)} s | "
        f"{'yes' if drift_ok else '**NO**'} |",
        f"| lost finals | {len(row['lost'])} problem(s); listeners missing {row['listener_missing']}, "
        f"duplicated {row['listener_duplicates']} | {'yes' if not row['lost'] else '**NO**'} |", "",
        *(["Problems:", "", *[f"- {x}" for x in row["lost"][:20]], ""] if row["lost"] else []),
        f"Result: **{'pass' if ok else 'FAIL'}**", "",
        "## Samples", "",
        "| min | sessions | " + " | ".join(f"{p} RSS / fds" for p in procs) + " | lag (sum) | streams (MiB) |",
        "|---:|---:|" + "---:|" * len(procs) + "---:|---:|",
    ]
    for s in samples:
        lines.append(f"| {s['t'] / 60:.1f} | {s['sessions_done']} | "
                     + " | ".join(f"{s['rss_mib'].get(p, 0):.0f} / {s['fds'].get(p, 0)}" for p in procs)
                     + f" | {sum(s['lag'].values())} | {sum(s['stream_bytes'].values()) / 2**20:.1f} |")
    return "\n".join(lines), ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--sessions", type=int, default=6)
    p.add_argument("--listeners", type=int, default=200)
    p.add_argument("--sample-s", type=float, default=30)
    p.add_argument("--session-s", type=float, nargs=2, default=[30, 120], metavar=("MIN", "MAX"),
                   help="each microphone session's length, drawn between these")
    p.add_argument("--no-save", action="store_true", help="print only (the short run in the tests)")
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    args = p.parse_args()
    row = asyncio.run(main_async(args))
    report, ok = render(row, args)
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    if args.no_save:
        print(report)
    else:
        save_report("soak", report, row)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
