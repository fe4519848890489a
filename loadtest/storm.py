"""Reconnect storm: thousands of channel listeners lose their edge at once (SIGKILL) and come back.

    python -m loadtest.storm [--listeners 2000] [--channels 4] [--settle 20] [--after 20]

Starts `tolk up` with `--channels` synthetic channels (the driver publishes one numbered caption a second per
channel, live and into the channel history, as fan-out does) and one real channel (`live`: a clip on repeat
through ingest → STT → fan-out). `--listeners` WebSocket listeners (Python, one process) subscribe, spread over
the channels. After `--settle` s the edge is SIGKILLed; `tolk up` restarts it. Each listener reconnects as the
page does (jittered backoff, 0.25 s doubling to 5 s) and re-subscribes with `after` = the last final it got.

Reported: how long the edge took to be ready again, how long each listener took from the kill to its
`subscribed` (p50/p95/max; any not back within `--recover-timeout` fail the run), captions lost (a gap in a
channel's numbers) and duplicated (a caption seen twice) per listener, and whether the real pipeline stalled
(finals of the `live` channel on NATS across the kill: the longest gap, against the longest before it, and one
run throughout). Printed and saved under loadtest/reports/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

from actors.runtime import backoff
from loadtest.broadcast import edge_process, free_port, radio_mp3, serve_radio, start_tolk
from loadtest.mic import command, machine, save_report

PREFIX = "storm:"


@dataclass
class Listener:
    channel: str
    seen: Counter[tuple[str, int]] = field(default_factory=Counter)  # every final received, live or replayed
    numbers: list[int] = field(default_factory=list)  # the driver's caption numbers, in arrival order
    after: dict[str, Any] | None = None
    subscribed_at: list[float] = field(default_factory=list)
    dropped_at: list[float] = field(default_factory=list)
    replayed: int = 0


async def listen(http: aiohttp.ClientSession, url: str, me: Listener) -> None:
    """One listener, for as long as the run: reconnects like the page (edge/static/js/channel.js)."""
    attempt = 0
    while True:
        try:
            async with http.ws_connect(url, max_msg_size=0, autoping=True) as ws:
                msg: dict[str, Any] = {"type": "subscribe", "channel": me.channel}
                if me.after:
                    msg["after"] = me.after
                await ws.send_json(msg)
                async for m in ws:
                    if m.type != aiohttp.WSMsgType.TEXT:
                        continue  # the live channel's audio frames
                    data = json.loads(m.data)
                    kind = data.get("type")
                    if kind == "subscribed":
                        attempt = 0
                        me.subscribed_at.append(time.time())
                    elif kind == "final" and data.get("text"):
                        key = (data["session_id"], data["seq"])
                        me.seen[key] += 1
                        me.after = {"session_id": key[0], "seq": key[1]}
                        me.replayed += bool(data.get("replay"))
                        if data["text"].startswith(PREFIX):
                            me.numbers.append(int(data["text"][len(PREFIX):]))
        except (aiohttp.ClientError, OSError, TimeoutError):
            pass
        me.dropped_at.append(time.time())
        await asyncio.sleep(backoff.delay(attempt, 0.25, 5.0))
        attempt += 1


async def inject(nats_url: str, data: Path, names: list[str], stop: asyncio.Event, times: list[float]) -> int:
    """One numbered final a second per synthetic channel: into its history (TOLK_CAPTIONS), then live."""
    from actors.runtime import channels, permissions
    from actors.runtime.bus import Bus, NatsAuth
    from schemas import ClientResult, ResultKind

    password = permissions.local_password(data)
    bus = await Bus.connect(nats_url, "storm-bench",
                            auth=NatsAuth(nats_user=permissions.ADMIN, nats_password=password) if password else None)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            times.append(time.time())
            for name in names:
                stream = channels.stream_id(name)
                r = ClientResult(session_id=f"{stream}=storm", utterance_id=n, seq=n, kind=ResultKind.FINAL,
                                 text=f"{PREFIX}{n}", stream_id=stream, published_at=time.time(), start=n, end=n + 1)
                await bus.publish(channels.captions_subject(stream), r, msg_id=f"{r.session_id}:c{n}")
                await bus.send(f"tolk.session.{stream}.out", r)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await bus.close()
    return n


async def watch_pipeline(nats_url: str, data: Path, channel: str, out: list[tuple[float, str]]) -> Any:
    """Finals of the real channel as fan-out stores them: (arrival, run) each."""
    from actors.runtime import channels, permissions
    from actors.runtime.bus import Bus, NatsAuth
    from schemas import ClientResult, decode

    password = permissions.local_password(data)
    bus = await Bus.connect(nats_url, "storm-watch",
                            auth=NatsAuth(nats_user=permissions.ADMIN, nats_password=password) if password else None)

    async def on(msg: Any) -> None:
        r = decode(msg.data, ClientResult)
        out.append((time.time(), r.session_id))

    await bus.nc.subscribe(channels.captions_subject(channels.stream_id(channel)), cb=on)
    return bus


def ready(port: int) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
        return r.status == 200
    return False


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    names = [f"storm{i}" for i in range(args.channels)]
    radio_port, port = free_port(), free_port()
    runner = await serve_radio(radio_port, radio_mp3("jfk"))
    tmp = tempfile.TemporaryDirectory(prefix="tolk-storm-")
    data = Path(tmp.name)
    # The synthetic channels' sources never answer (ingest retries quietly); `live` plays a real clip.
    config = {"channels": [{"name": n, "url": f"http://127.0.0.1:{free_port()}/{n}.mp3", "language": "en"}
                           for n in names]
              + [{"name": "live", "url": f"http://127.0.0.1:{radio_port}/live.mp3", "language": "en"}]}
    proc = await asyncio.to_thread(start_tolk, data, port, {"TOLK_CHANNELS": json.dumps(config)})
    nats_url = str(json.loads(next((data / "run").glob("*.ports")).read_text())["nats"][0])
    stop = asyncio.Event()
    sent_at: list[float] = []
    injector = asyncio.create_task(inject(nats_url, data, names, stop, sent_at))
    real: list[tuple[float, str]] = []
    watcher = await watch_pipeline(nats_url, data, "live", real)
    url = f"ws://127.0.0.1:{port}/v1/listen"
    everyone = [Listener("live" if i % args.live_every == 0 else names[i % len(names)]) for i in range(args.listeners)]
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(connect=10))
    tasks: list[asyncio.Task[None]] = []
    row: dict[str, Any] = {}
    try:
        for i, me in enumerate(everyone):  # ramp up at --ramp-rate a second
            tasks.append(asyncio.create_task(listen(http, url, me)))
            if i % 50 == 49:
                await asyncio.sleep(50 / args.ramp_rate)
        for _ in range(240):
            if all(me.subscribed_at for me in everyone):
                break
            await asyncio.sleep(0.5)
        joined = sum(bool(me.subscribed_at) for me in everyone)
        if joined < len(everyone):
            raise SystemExit(f"only {joined} of {len(everyone)} listeners subscribed before the kill")
        await asyncio.sleep(args.settle)
        edge = edge_process(proc)
        killed_at = time.time()
        edge.send_signal(signal.SIGKILL)
        print(f"SIGKILL edge (pid {edge.pid}) with {len(everyone)} listeners", flush=True)
        edge_back = float("nan")
        deadline = time.monotonic() + args.recover_timeout
        while time.monotonic() < deadline:
            if edge_back != edge_back and await asyncio.to_thread(ready, port):
                edge_back = time.time() - killed_at
            if all(me.subscribed_at[-1] > killed_at for me in everyone):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(args.after)
        back = [me.subscribed_at[-1] - killed_at for me in everyone if me.subscribed_at[-1] > killed_at]
        rss = psutil.Process(edge_process(proc).pid).memory_info().rss / 2**20
        row = {"listeners": len(everyone), "channels": args.channels, "edge_ready_s": round(edge_back, 2),
               "back": len(back), "back_p50_s": round(pct(back, 50), 2), "back_p95_s": round(pct(back, 95), 2),
               "back_max_s": round(max(back, default=float("nan")), 2),
               "reconnect_attempts": sum(len(me.dropped_at) for me in everyone),
               "edge_rss_after_mib": round(rss, 1), "killed_at": killed_at}
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.close()
        sent = await injector
        await watcher.close()
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 90)
        await runner.cleanup()
        tmp.cleanup()
    synthetic = [me for me in everyone if me.channel != "live"]
    gaps = [len(set(range(min(me.numbers), max(me.numbers) + 1)) - set(me.numbers)) if me.numbers else -1
            for me in synthetic]
    dups = [sum(c - 1 for c in me.seen.values()) for me in everyone]
    lost = Counter(n for me in synthetic if me.numbers
                   for n in set(range(min(me.numbers), max(me.numbers) + 1)) - set(me.numbers))
    row["lost_captions_s_after_kill"] = {round(sent_at[n - 1] - row["killed_at"], 1): k for n, k in lost.most_common(8)}
    killed = row["killed_at"]
    before = [t for t, _ in real if t < killed]
    across = [t for t, _ in real if killed - 1 <= t]
    longest = lambda ts: max((b - a for a, b in itertools.pairwise(ts)), default=float("nan"))  # noqa: E731
    row.update({
        "captions_sent": sent, "listeners_with_gaps": sum(g > 0 for g in gaps),
        "captions_lost": sum(max(g, 0) for g in gaps),
        "listeners_without_captions": sum(g < 0 for g in gaps), "duplicates": sum(dups),
        "listeners_with_duplicates": sum(d > 0 for d in dups),
        "replayed_per_listener_p50": pct([float(me.replayed) for me in synthetic], 50),
        "real_finals": len(real), "real_runs": len({sid for _, sid in real}),
        "real_gap_before_s": round(longest(before), 2), "real_gap_across_s": round(longest(across), 2),
        "real_finals_after_kill": len([t for t in across if t > killed]),
    })
    return row


def render(row: dict[str, Any], args: argparse.Namespace) -> tuple[str, bool]:
    ok = (row["back"] == row["listeners"] and row["captions_lost"] == 0 and row["duplicates"] == 0
          and row["listeners_without_captions"] == 0 and row["real_runs"] == 1 and row["real_finals_after_kill"] > 0)
    lines = [
        "# Tolk reconnect storm", "",
        f"- command: `{command('loadtest.storm')}`",
        f"- machine: {machine()}; listeners (one Python process) and `tolk up` on the same box",
        f"- {row['listeners']} listeners on {row['channels']} synthetic channels (a numbered caption a second each) "
        f"and 1 real channel (every {args.live_every}th listener); the edge SIGKILLed after {args.settle} s, "
        "restarted by `tolk up`; listeners reconnect with jittered backoff and `after`", "",
        "| edge ready again | listeners back | back p50 / p95 / max (s after the kill) | reconnect attempts |",
        "|---:|---:|---:|---:|",
        f"| {row['edge_ready_s']} s | {row['back']} / {row['listeners']} | {row['back_p50_s']} / {row['back_p95_s']} "
        f"/ {row['back_max_s']} | {row['reconnect_attempts']} |", "",
        "| captions sent per channel | listeners with a gap | captions lost | duplicates "
        "| replayed per listener (p50) |",
        "|---:|---:|---:|---:|---:|",
        f"| {row['captions_sent']} | {row['listeners_with_gaps']} | {row['captions_lost']} | {row['duplicates']} "
        f"| {row['replayed_per_listener_p50']:.0f} |", "",
        f"Real pipeline (`live`): {row['real_finals']} finals in {row['real_runs']} run(s); longest gap between "
        f"finals before the kill {row['real_gap_before_s']} s, from the kill on {row['real_gap_across_s']} s; "
        f"{row['real_finals_after_kill']} finals after the kill. Edge RSS after: {row['edge_rss_after_mib']} MiB.", "",
        f"Result: **{'pass' if ok else 'FAIL'}** (every listener back, nothing lost or doubled, the pipeline ran "
        "on in one run).",
    ]
    return "\n".join(lines), ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listeners", type=int, default=2000)
    p.add_argument("--channels", type=int, default=4, help="synthetic channels (plus the real `live` one)")
    p.add_argument("--live-every", type=int, default=10, help="every Nth listener is on the real channel")
    p.add_argument("--ramp-rate", type=float, default=200, help="listeners connecting per second at the start")
    p.add_argument("--settle", type=float, default=20, help="seconds all listeners stay before the kill")
    p.add_argument("--after", type=float, default=20, help="seconds observed after every listener is back")
    p.add_argument("--recover-timeout", type=float, default=120)
    p.add_argument("--no-save", action="store_true", help="print only (tests)")
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    args = p.parse_args()
    row = asyncio.run(main_async(args))
    report, ok = render(row, args)
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    if args.no_save:
        print(report)
    else:
        save_report("storm", report, row)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
