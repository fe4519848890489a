"""Power-loss harness: are the finals a client was sent still stored after the power goes?

    python -m loadtest.powerloss [--quick] [--crashes 8] [--sessions 3] [--sync always|120s|default]
    python -m loadtest.powerloss --ack-cost 3000   # what an fsync per write costs on this disk, no harness
    python -m loadtest.powerloss --write-mix 30    # the pipeline's writes per stream, per durability policy

`tolk up` runs with its JetStream store on loadtest/lazyfs.py, a FUSE file system that keeps every write in
memory until it is fsynced, as a page cache does. Real speech streams through the edge as sessions; at a random
moment the power goes: nats-server, the file system's process (with every unsynced write) and the rest of
`tolk up` are SIGKILLed together. Then the file system is mounted again over what reached the "disk", `tolk up`
restarts on it, and every final any client was sent in any round so far is looked up in TOLK_RESULTS (what
resume and replay serve) and every session record in tolk_sessions. A final missing there is lost; one stored
twice (two results for one utterance) is duplicated. The next round streams on the restarted system.

`--sync` picks JetStream's sync_interval (TOLK_NATS_SYNC): `always` is Tolk's policy; `default` is NATS's own
default, `2m` (what Tolk ran before the policy). TOLK_NATS_TRANSIENT_STORAGE passes through: with `memory` (the
default) the audio and segments in flight are lost at every cut by design, so what is checked is the promise:
finals clients were sent, and session records. The report is saved under loadtest/reports/; the last line printed is
`acknowledged=N lost=L duplicated=D`. Needs /dev/fuse and fusermount3 (Debian fuse3) and root or fuse rights.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats.js.errors
import psutil

import nats
from loadtest.lazyfs import Mount
from loadtest.mic import command, machine, mic_stream, save_report
from loadtest.ports import free_port
from loadtest.speech import clips
from schemas import DecodeError, ResultKind, SessionRecord, Transcript, decode

SAMPLE_RATE = 16000
CHUNK_MS = 100


@dataclass
class Final:
    session_id: str
    utterance_id: int
    text: str
    round: int


@dataclass
class Round:
    crash_after_s: float
    sessions: int
    finals_sent: int = 0  # to clients, this round
    restart_s: float = 0.0  # power back → `tolk up` ready again
    lost: int = 0  # cumulative check after this round's restart
    duplicated: int = 0
    records_lost: int = 0
    lost_examples: list[str] = field(default_factory=list)


class Tolk:
    """`tolk up` (no NATS auth: the harness reads the store directly) with its store on a LazyFS mount."""

    def __init__(self, root: Path, sync: str) -> None:
        self.data = root / "data"
        self.mount = Mount(root / "disk", self.data / "jetstream")
        self.sync = sync
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = self.nats_port = 0

    def start(self, timeout: float = 300.0) -> float:
        t0 = time.monotonic()
        self.mount.start()
        self.port, self.nats_port = free_port(), free_port()
        env = {"TOLK_ADMIT_FINAL_BUSY": "0", **{k: v for k, v in os.environ.items() if k != "TOLK_NATS_SYNC"}}
        args = [str(Path(sys.executable).parent / "tolk"), "up", "--data-dir", str(self.data), "--port",
                str(self.port), "--nats-port", str(self.nats_port), "--no-nats-auth"]
        args += ["--nats-sync", "2m" if self.sync == "default" else self.sync]
        log = open(self.data / "tolk-up.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.power_loss()
        raise SystemExit(f"tolk up did not become ready; see {self.data / 'tolk-up.log'}")

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/listen"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def power_loss(self) -> None:
        """Everything dies at once: nats-server first, the file system (and its unsynced writes) right after,
        then every other process of `tolk up`. Nothing gets a SIGTERM it could flush on."""
        if not self.proc:
            return
        try:
            tree = [self.proc.pid, *(p.pid for p in psutil.Process(self.proc.pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            tree = []
        servers = [pid for pid in tree if _is_nats(pid)]
        for pid in servers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.mount.crash()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        for pid in tree:  # reap-free wait: the children were the supervisor's
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
            if self.proc.poll() is None:
                self.power_loss()
        self.mount.close()


def _is_nats(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return "nats-server" in " ".join(psutil.Process(pid).cmdline()[:1])
    return False


async def stream(url: str, pcm: bytes, sent: list[Final], rnd: int) -> None:
    """One client at real-time pace; every final it is sent is recorded the moment it arrives. Ends quietly
    when the server dies under it."""
    step = SAMPLE_RATE * CHUNK_MS // 1000 * 2
    with contextlib.suppress(aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, RuntimeError):
        async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_json({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le",
                                "language": "en"})

            async def reader() -> None:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = json.loads(msg.data)
                    if data.get("type") == "final":
                        sent.append(Final(data["session_id"], data["utterance_id"], data.get("text", ""), rnd + 1))

            task = asyncio.create_task(reader())
            t0 = time.monotonic()
            for i, off in enumerate(range(0, len(pcm), step)):
                await asyncio.sleep(max(0.0, t0 + i * CHUNK_MS / 1000 - time.monotonic()))
                await ws.send_bytes(pcm[off:off + step])
            await ws.send_json({"type": "stop"})
            await asyncio.wait_for(task, 60)


async def stored(nats_url: str) -> tuple[Counter[tuple[str, int]], set[str]]:
    """Finals per (session, utterance) in TOLK_RESULTS, and the session ids tolk_sessions holds."""
    nc = await nats.connect(nats_url, connect_timeout=10)
    try:
        js = nc.jetstream()
        finals: Counter[tuple[str, int]] = Counter()
        info = await js.stream_info("TOLK_RESULTS")
        for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1 if info.state.messages else 1):
            try:
                msg = await js.get_msg("TOLK_RESULTS", seq)
            except nats.js.errors.NotFoundError:
                continue
            with contextlib.suppress(DecodeError):
                t = decode(msg.data or b"", Transcript)
                if t.kind == ResultKind.FINAL:
                    finals[(t.session_id, t.utterance_id)] += 1
        kv = await js.key_value("tolk_sessions")
        records: set[str] = set()
        # Keys from STREAM.INFO, not kv.keys() (which can list short: see Bus.kv_keys).
        prefix = "$KV.tolk_sessions."
        listing = await js.stream_info("KV_tolk_sessions", subjects_filter=f"{prefix}>")
        for subject in listing.state.subjects or {}:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError, DecodeError):
                entry = await kv.get(subject.removeprefix(prefix))
                if entry.value:
                    records.add(decode(entry.value, SessionRecord).session_id)
        return finals, records
    finally:
        await nc.close()


def check(sent: list[Final], finals: Counter[tuple[str, int]], records: set[str], r: Round) -> None:
    seen = {(f.session_id, f.utterance_id): f for f in sent}
    lost = [f for key, f in seen.items() if finals[key] == 0]
    r.lost, r.duplicated = len(lost), sum(1 for key in seen if finals[key] > 1)
    r.records_lost = len({f.session_id for f in sent} - records)
    r.lost_examples = [f"{f.session_id[:8]}/u{f.utterance_id} (round {f.round}): {f.text[:40]!r}" for f in lost[:5]]


async def run(args: argparse.Namespace) -> int:
    cs = list(clips("en"))
    rng = random.Random(args.seed)
    rounds: list[Round] = []
    sent: list[Final] = []
    with tempfile.TemporaryDirectory(prefix="tolk-powerloss-") as tmp:
        tolk = Tolk(Path(tmp), args.sync)
        try:
            tolk.start()
            for rnd in range(args.crashes):
                r = Round(crash_after_s=rng.uniform(*args.crash_window), sessions=args.sessions)
                rounds.append(r)
                before = len(sent)
                pcms = [mic_stream(cs, rnd * args.sessions + i, args.seconds)[0] for i in range(args.sessions)]
                tasks = [asyncio.create_task(stream(tolk.ws, pcm, sent, rnd)) for pcm in pcms]
                await asyncio.sleep(r.crash_after_s)
                tolk.power_loss()
                await asyncio.gather(*tasks, return_exceptions=True)
                r.finals_sent = len({(f.session_id, f.utterance_id) for f in sent[before:]})
                r.restart_s = tolk.start()
                check(sent, *await stored(tolk.nats_url), r)
                print(f"round {rnd + 1}/{args.crashes}: crash at {r.crash_after_s:.1f} s, {r.finals_sent} finals "
                      f"sent; after restart ({r.restart_s:.0f} s) lost {r.lost}, duplicated {r.duplicated}, "
                      f"session records lost {r.records_lost}", flush=True)
        finally:
            tolk.stop()
    acknowledged = len({(f.session_id, f.utterance_id) for f in sent})
    last = rounds[-1] if rounds else Round(0.0, 0)
    report = render(args, rounds, acknowledged, last)
    save_report(args.name, report, {"rounds": [r.__dict__ for r in rounds], "acknowledged": acknowledged,
                                    "lost": last.lost, "duplicated": last.duplicated})
    print(f"acknowledged={acknowledged} lost={last.lost} duplicated={last.duplicated}")
    return 0


@contextlib.asynccontextmanager
async def bare_jetstream(sync: str, extra_conf: str = "") -> AsyncIterator[nats.js.JetStreamContext]:
    """A bare nats-server with JetStream (`sync_interval` `sync`, more of its `jetstream {}` block in `extra_conf`)
    in a temporary store, and a connection to it, for as long as the block runs."""
    with tempfile.TemporaryDirectory(prefix="tolk-bare-nats-") as tmp:
        port = free_port()
        conf = Path(tmp) / "nats.conf"
        conf.write_text(f'jetstream {{\n  sync_interval: "{sync}"\n{extra_conf}}}\n')
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "nats-server"), "-c", str(conf), "-js", "-sd", tmp,
            "-a", "127.0.0.1", "-p", str(port), stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                with contextlib.suppress(OSError):
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                await asyncio.sleep(0.1)
            nc = await nats.connect(f"nats://127.0.0.1:{port}")
            try:
                yield nc.jetstream()
            finally:
                await nc.close()
        finally:
            proc.terminate()
            await proc.wait()


async def ack_cost(n: int) -> int:
    """What an fsync per write costs on this disk, without the pipeline's noise: n publishes of one 100 ms audio
    chunk (3,200 bytes) to a file stream, one at a time, on a real nats-server, per sync_interval."""
    import numpy as np

    lines = ["| sync_interval | publish → ack p50 / p99 (ms) | acknowledged writes/s, one at a time |",
             "|---|---:|---:|"]
    for sync in ("2m", "always"):
        async with bare_jetstream(sync) as js:
            await js.add_stream(name="A", subjects=["a.>"], storage="file")
            chunk, took = bytes(3200), []
            t_all = time.perf_counter()
            for i in range(n):
                t = time.perf_counter()
                await js.publish(f"a.{i % 8}", chunk)
                took.append(time.perf_counter() - t)
            rate = n / (time.perf_counter() - t_all)
        p50, p99 = (float(np.percentile(took, q)) * 1000 for q in (50, 99))
        lines.append(f"| `{sync}` | {p50:.2f} / {p99:.2f} | {rate:.0f} |")
    report = "\n".join(["# JetStream acknowledgement cost per sync_interval", "",
                         f"- command: `{command('loadtest.powerloss')}`", f"- machine: {machine()}", "", *lines])
    save_report("powerloss-ackcost", report + "\n", {"lines": lines})
    return 0


async def _publish_every(js: nats.js.JetStreamContext, took: list[float], period: float, subject: str,
                         size: Callable[[int], int], t_end: float) -> None:
    """One publisher's writes, awaited one at a time (as an actor's are), from a random phase until `t_end`."""
    i = 0
    due = time.monotonic() + random.uniform(0, period)
    while due < t_end:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        t = time.perf_counter()
        await js.publish(subject, bytes(size(i)))
        took.append(time.perf_counter() - t)
        i, due = i + 1, due + period


MIX_POLICIES = (("`always`, audio and segments on file", "always", "file"),
                ("`always`, audio and segments in memory (Tolk's policy)", "always", "memory"),
                ("`2m` everywhere", "2m", "file"))


async def write_mix(seconds: float, sessions: int) -> int:
    """Which streams' writes cost what: the pipeline's JetStream writes for `sessions` microphones (100 ms audio
    chunks, a partial segment every 0.7 s carrying its utterance so far, a final segment, transcripts and results
    for each, a checkpoint a second), published concurrently as the actors do, on the declared topology, per
    policy; publish → ack per stream. No STT, so the box's CPU load matters far less than in loadtest.mic."""
    import numpy as np

    from actors.runtime import topology

    kinds = ("audio", "partial segment", "final segment", "transcript", "result", "checkpoint (KV)")
    lines = ["| policy | " + " | ".join(f"{k} p50 / p99 (ms)" for k in kinds) + " | writes/s |",
             "|---|" + "---:|" * (len(kinds) + 1)]
    for label, sync, storage in MIX_POLICIES:
        took: dict[str, list[float]] = {k: [] for k in kinds}
        async with bare_jetstream(sync, "  max_memory_store: 1GB\n") as js:
            topo = topology.load(transient_storage="memory" if storage == "memory" else "file")
            await topology.apply(js, topo)
            pool = topo.pools[0]
            t_end = time.monotonic() + seconds

            specs: list[tuple[str, float, str, Callable[[int], int]]] = []
            for n in range(sessions):
                sid, p = f"mix{n}", n % topo.partitions
                specs += [
                    ("audio", 0.1, f"tolk.audio.{p}.{sid}", lambda i: 3200),
                    ("partial segment", 0.7, f"tolk.segment.partial.{pool}.{p}.{sid}",
                     lambda i: 32000 * (1 + i % 7)),  # 1 to 7 s of 16 kHz int16: the utterance so far
                    ("final segment", 5.0, f"tolk.segment.final.{pool}.{p}.{sid}", lambda i: 160000),
                    ("transcript", 0.6, f"tolk.transcript.{p}.{sid}", lambda i: 400),
                    ("result", 0.6, f"tolk.result.{p}.{sid}", lambda i: 500),
                    ("checkpoint (KV)", 1.0, f"$KV.tolk_segmenter.{sid}", lambda i: 120),
                ]
            tasks = [_publish_every(js, took[k], period, subj, size, t_end) for k, period, subj, size in specs]
            await asyncio.gather(*tasks)
        cells = [f"{np.percentile(took[k], 50) * 1000:.2f} / {np.percentile(took[k], 99) * 1000:.1f}" for k in kinds]
        rate = sum(len(v) for v in took.values()) / seconds
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {rate:.0f} |")
        print(lines[-1], flush=True)
    report = "\n".join(["# JetStream writes of the pipeline, per durability policy", "",
                         f"- command: `{command('loadtest.powerloss')}`", f"- machine: {machine()}",
                         f"- {sessions} microphone sessions' writes for {seconds:.0f} s, each stream's publishes "
                         "awaited one at a time per session, as the actors do; no STT", "", *lines])
    save_report("powerloss-writemix", report + "\n", {"lines": lines})
    return 0


def render(args: argparse.Namespace, rounds: list[Round], acknowledged: int, last: Round) -> str:
    sync = "`2m` (NATS's default)" if args.sync == "default" else f"`{args.sync}`"
    lines = [
        "# Tolk power-loss harness", "",
        f"- command: `{command('loadtest.powerloss')}`",
        f"- machine: {machine()}",
        f"- JetStream sync_interval: {sync}; store on loadtest/lazyfs.py (unsynced writes vanish at the crash)",
        f"- {args.sessions} sessions of real speech per round; crash at a random {args.crash_window[0]:.0f}–"
        f"{args.crash_window[1]:.0f} s into the round; every final sent so far checked after each restart", "",
        "| round | crash at (s) | finals sent | restart (s) | lost (cumulative) | duplicated | session records lost |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rounds, 1):
        lines.append(f"| {i} | {r.crash_after_s:.1f} | {r.finals_sent} | {r.restart_s:.0f} | {r.lost} | "
                     f"{r.duplicated} | {r.records_lost} |")
    lines += ["", f"Finals clients were sent: **{acknowledged}**; lost: **{last.lost}**; "
                  f"duplicated: **{last.duplicated}**; session records lost: **{last.records_lost}**."]
    if last.lost_examples:
        lines += ["", "Lost, for example: " + "; ".join(last.lost_examples)]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 crashes of 2 sessions (under 10 minutes)")
    p.add_argument("--crashes", type=int, default=8)
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--seconds", type=float, default=60.0, help="audio per session and round")
    p.add_argument("--crash-window", type=float, nargs=2, default=[8.0, 40.0], metavar=("FROM", "TO"),
                   help="seconds into a round the power goes, drawn uniformly")
    p.add_argument("--sync", default="always", help="JetStream sync_interval: always, a duration, or default")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--name", default=None, help="report name (default: powerloss-<sync>)")
    p.add_argument("--ack-cost", type=int, default=0, metavar="N",
                   help="instead: N single publishes on the real disk per sync_interval (the policy's raw cost)")
    p.add_argument("--write-mix", type=float, default=0, metavar="SECONDS",
                   help="instead: the pipeline's writes for --sessions (6 if not given) microphones this long, per "
                        "durability policy, publish → ack per stream (which streams' fsyncs cost what)")
    args = p.parse_args()
    if args.ack_cost:
        return asyncio.run(ack_cost(args.ack_cost))
    if args.write_mix:
        return asyncio.run(write_mix(args.write_mix, 6 if "--sessions" not in sys.argv else args.sessions))
    if args.quick:
        args.crashes, args.sessions = min(args.crashes, 3), min(args.sessions, 2)
    args.name = args.name or f"powerloss-{args.sync}"
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
