"""A 3-node NATS cluster on loopback with JetStream R3: one node is killed mid-stream and nothing is lost.

Three real nats-server processes route to each other; every stream, consumer and KV bucket has 3 replicas;
`tolk up --nats-url a,b,c` runs the pipeline against them. Three sessions stream real speech; 4 s in, one
server gets SIGKILL. Every session must finish, and every final the pipeline stored must reach its client
exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import nats
from actors.runtime.embedded import SERVER_CONF, server_binary
from loadtest.client import stream_pcm
from loadtest.faults import CLIPS
from loadtest.speech import clips
from loadtest.wer import corpus_wer
from tests.conftest import Running, free_port, start_tolk, stop_tolk

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    client = [free_port() for _ in range(3)]
    route = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{r}" for r in route)
    nodes = []
    for i in range(3):
        store = tmp_path / f"n{i}"
        store.mkdir()
        log = open(tmp_path / f"n{i}.log", "wb")  # lives as long as the server
        proc = subprocess.Popen([server_binary(), "-c", str(SERVER_CONF), "-js", "-sd", str(store), "-a", "127.0.0.1",
                                 "-p", str(client[i]), "--server_name", f"n{i}", "--cluster_name", "tolk",
                                 "--cluster", f"nats://127.0.0.1:{route[i]}", "--routes", routes],
                                stdout=log, stderr=subprocess.STDOUT)
        nodes.append((f"nats://127.0.0.1:{client[i]}", proc))
    try:
        yield nodes
    finally:
        for _, proc in nodes:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)


async def wait_for_jetstream(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
            try:
                await nc.jetstream().account_info()
                return
            finally:
                await nc.close()
        except Exception:
            await asyncio.sleep(0.5)
    raise AssertionError("JetStream cluster did not form")


def stored_finals(http: str, sid: str) -> list[str]:
    with urllib.request.urlopen(f"{http}/v1/sessions/{sid}/transcript?format=verbose_json", timeout=30) as resp:
        return [s["text"] for s in json.loads(resp.read())["segments"]]


async def test_a_node_dies_mid_stream_and_nothing_is_lost(cluster: list[tuple[str, subprocess.Popen[bytes]]],
                                                          tmp_path: Path) -> None:
    urls = ",".join(url for url, _ in cluster)
    await wait_for_jetstream(cluster[0][0])
    (tmp_path / "tolk").mkdir()
    run: Running = await asyncio.to_thread(start_tolk, tmp_path / "tolk", ["--nats-url", urls, "--nats-replicas", "3"])
    try:
        nc = await nats.connect(cluster[0][0])
        info = await nc.jetstream().stream_info("TOLK_RESULTS")
        await nc.close()
        assert info.config.num_replicas == 3 and info.cluster is not None and len(info.cluster.replicas or []) == 2

        english = {c.name: c for c in clips("en")}
        picked = [english[n] for n in CLIPS[:3]]

        async def kill_a_node() -> None:
            await asyncio.sleep(4)
            cluster[2][1].send_signal(signal.SIGKILL)

        killer = asyncio.create_task(kill_a_node())
        runs = await asyncio.gather(*(stream_pcm(run.ws, *c.pcm16(), pace=1.0, timeout=180) for c in picked))
        await killer
        assert cluster[2][1].wait(5) == -signal.SIGKILL
        for clip, r in zip(picked, runs, strict=True):
            assert r.done, (clip.name, r.errors)
            seqs = [x["seq"] for x in r.results]
            assert seqs == sorted(set(seqs)), seqs
            got = [x["text"] for x in r.finals if x["text"]]
            assert got == stored_finals(run.http, r.session_id)
        wer = corpus_wer([(c.reference, r.text()) for c, r in zip(picked, runs, strict=True)])
        print(f"3-node cluster, one node killed 4 s in: {sum(len(r.finals) for r in runs)} finals, WER {wer:.3f}")
        assert wer < 0.2
    finally:
        await asyncio.to_thread(stop_tolk, run)
