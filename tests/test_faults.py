"""Kill -9 each pipeline actor while three sessions stream real speech: every final the pipeline made reaches
its client exactly once and in order, and the actor comes back (`loadtest.faults`, the scenario of the report)."""

from __future__ import annotations

import pytest

from loadtest.faults import report, run_faults

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]


async def test_sigkill_each_pipeline_actor_mid_stream() -> None:
    results = await run_faults(["segmenter", "stt", "translator", "fanout"], sessions=3, kill_at=3.0, pace=1.0)
    print(report(results, ["(tests/test_faults.py)"]))
    for r in results:
        assert r.restarted, f"{r.actor} was not restarted"
        assert r.expected >= 6, f"{r.actor}: too few finals to mean anything ({r.expected})"
        assert (r.duplicated, r.missing, r.in_order) == (0, 0, True), r
        assert r.delivered == r.expected, r
        # Nothing is lost (a killed segmenter's held audio is replayed), so every WER is the pipeline's own.
        assert r.wer < 0.15, r
        assert r.recovery_s is not None and r.recovery_s < 60, r
        assert not r.notes, r.notes
