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
        assert sum("actors.cli actor" in n for n in names) == 7  # the pipeline, the exporter, the edge
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
