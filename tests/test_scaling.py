"""Scale-out without code changes: two replicas of each pipeline actor on one NATS, as `tolk actor NAME`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from actors.runtime.partition import owned_partitions, partition_for
from actors.runtime.topology import load
from loadtest.client import stream_pcm
from loadtest.speech import clips
from loadtest.wer import corpus_wer
from tests.conftest import free_port, wait_ready

pytestmark = pytest.mark.e2e


def spawn(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "actors.cli", "actor", name], stdout=fh,
                                stderr=subprocess.STDOUT, env=env)


@pytest.mark.asyncio(loop_scope="session")
async def test_two_replicas_of_each_actor_split_the_sessions(nats_url: str, bus: object, tmp_path: Path) -> None:
    base = {**os.environ, "TOLK_NATS_URL": nats_url, "TOLK_MODEL_CACHE": str(tmp_path / "models")}
    port = free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for i in range(2):
        part = {"TOLK_REPLICAS": "2", "TOLK_REPLICA_INDEX": str(i)}
        procs[f"segmenter{i}"] = spawn("segmenter", {**base, **part}, tmp_path / f"segmenter{i}.log")
        procs[f"fanout{i}"] = spawn("fanout", {**base, **part}, tmp_path / f"fanout{i}.log")
        procs[f"stt{i}"] = spawn("stt", base, tmp_path / f"stt{i}.log")  # shares stt-final / stt-partial
        procs[f"translator{i}"] = spawn("translator", base, tmp_path / f"translator{i}.log")  # shares `translator`
    procs["edge"] = spawn("edge", {**base, "TOLK_PORT": str(port)}, tmp_path / "edge.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", procs["edge"], tmp_path / "edge.log")
        partitions = load().partitions
        # Two sessions on each replica's partitions.
        ids: list[str] = []
        for replica in (0, 1):
            owned = owned_partitions(partitions, 2, replica)
            ids += [s for s in (f"scale-{replica}-{k}" for k in range(100))
                    if partition_for(s, partitions) in owned][:2]
        english = [c for c in clips("en") if c.seconds < 12][:4]
        runs = await asyncio.gather(*(
            stream_pcm(f"ws://127.0.0.1:{port}/v1/listen", *c.pcm16(), session_id=sid, pace=2.0, targets=["pt"])
            for sid, c in zip(ids, english, strict=True)
        ))
        for run, sid in zip(runs, ids, strict=True):
            assert run.done and run.session_id == sid and not run.errors
            assert all(r["translations"].get("pt") for r in run.finals if r["text"]), run.finals
        assert corpus_wer([(c.reference, run.text()) for c, run in zip(english, runs, strict=True)]) <= 0.15
        for replica in (0, 1):
            seg_log = (tmp_path / f"segmenter{replica}.log").read_text()
            fan_log = (tmp_path / f"fanout{replica}.log").read_text()
            mine = [s for s in ids if s.startswith(f"scale-{replica}-")]
            others = [s for s in ids if not s.startswith(f"scale-{replica}-")]
            assert all(f"{s}: new session" in seg_log for s in mine), seg_log[-2000:]
            assert not any(f"{s}: new session" in seg_log for s in others)
            assert all(f"{s}: routing results" in fan_log for s in mine)
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        codes = {name: p.wait(timeout=60) for name, p in procs.items()}
    assert all(code == 0 for code in codes.values()), codes
