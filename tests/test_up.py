"""`tolk up` against an existing NATS (--nats-url): starts no server of its own, still works."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.client import stream_pcm
from loadtest.speech import clips
from loadtest.wer import corpus_wer
from tests.conftest import start_tolk, stop_tolk

pytestmark = pytest.mark.e2e


@pytest.mark.asyncio(loop_scope="session")
async def test_up_with_external_nats(nats_url: str, tmp_path: Path) -> None:
    run = start_tolk(tmp_path, ["--nats-url", nats_url])
    try:
        names = [" ".join(p.cmdline()) for p in run.descendants()]
        assert not any("nats-server" in n for n in names), names
        # the pipeline (segmenter, stt, translator, diarizer, fanout, ingest), the exporter, the edge
        assert sum("actors.cli actor" in n for n in names) == 8
        c = next(c for c in clips("en") if c.name.startswith("en_jfk"))
        pcm, rate = c.pcm16()
        result = await stream_pcm(run.ws, pcm, rate, pace=2.0)
        assert result.done and corpus_wer([(c.reference, result.text())]) < 0.1
    finally:
        stop_tolk(run)
    assert not (tmp_path / "data" / "jetstream").exists()


def test_sigkilled_supervisor_leaves_no_orphans(tmp_path: Path) -> None:
    """Children die with their parent (PDEATHSIG), so even `kill -9 tolk-up` leaves nothing behind."""
    import psutil

    run = start_tolk(tmp_path)
    children = run.descendants()
    assert any("nats-server" in " ".join(p.cmdline()) for p in children)
    run.proc.kill()
    run.proc.wait(timeout=10)
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"orphans after SIGKILL: {[(p.pid, p.cmdline()) for p in alive]}"
    assert len(gone) == len(children)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_crash_backoff_does_not_delay_a_stop(tmp_path: Path) -> None:
    """A child in a crash loop (here a real `tolk actor` that exits at once) is restarted after a jittered
    backoff that grows with each quick crash; a stop during a long backoff ends the watch at once."""
    import asyncio
    import os
    import time

    from actors.supervisor import Child, Supervisor, UpOptions

    sup = Supervisor(UpOptions(nats_url="nats://127.0.0.1:1", data_dir=tmp_path))
    crasher = Child("crasher", dict(os.environ), actor="no-such-actor")
    sup.children = [crasher]
    await crasher.spawn()
    watch = asyncio.create_task(sup._watch())
    spawns = {crasher.proc.pid if crasher.proc else 0}
    for _ in range(400):  # restarts reaches 3 after waits of 0.5-1 s and 1-2 s
        if crasher.restarts >= 3:
            break
        await asyncio.sleep(0.05)
        spawns.add(crasher.proc.pid if crasher.proc else 0)
    assert len(spawns) >= 3  # restarted, each time a new process
    crasher.restarts = 8  # the next crash waits 15-30 s
    for _ in range(200):
        if crasher.restart_at is not None and crasher.restart_at - time.monotonic() > 10:
            break
        await asyncio.sleep(0.05)
    assert crasher.restart_at is not None
    t0 = time.monotonic()
    sup._stop.set()
    await asyncio.wait_for(watch, 5)
    assert time.monotonic() - t0 < 1.0
    await sup.shutdown()
