"""The soak and storm benchmarks, short, so the scripts keep working: their figures come from the full runs
(loadtest/reports/soak-latest.md, storm-latest.md), but what they check for correctness is checked here too —
no final lost or doubled while sessions come and go and listeners leave and come back, and 200 listeners of a
SIGKILLed edge all back with every caption they missed, none twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def run(module: str, args: list[str], out: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = subprocess.run([sys.executable, "-m", module, *args, "--no-save", "--json", str(out)],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_short_soak_loses_nothing(tmp_path: Path) -> None:
    proc, row = run("loadtest.soak", ["--minutes", "2", "--sessions", "2", "--listeners", "20", "--sample-s", "15",
                                      "--session-s", "10", "20"], tmp_path / "soak.json", timeout=600)
    assert "# Tolk soak" in proc.stdout
    assert row["lost"] == [], row["lost"]
    assert row["sessions"] >= 4 and row["finals"] > 0
    assert row["channel_finals"] > 0 and row["listener_missing"] == 0 and row["listener_duplicates"] == 0
    assert len(row["samples"]) >= 6 and row["verdicts"]
    names = set(row["samples"][-1]["rss_mib"])
    assert {"edge", "segmenter", "fanout", "nats-server"} <= names and any(n.startswith("stt") for n in names)
    assert {"TOLK_AUDIO", "TOLK_RESULTS", "KV_tolk_sessions"} <= set(row["samples"][-1]["stream_bytes"])


def test_short_reconnect_storm(tmp_path: Path) -> None:
    proc, row = run("loadtest.storm", ["--listeners", "200", "--settle", "5", "--after", "5"],
                    tmp_path / "storm.json", timeout=600)
    assert row["back"] == row["listeners"] == 200, proc.stdout[-2000:]
    assert row["captions_lost"] == 0 and row["duplicates"] == 0 and row["listeners_without_captions"] == 0, row
    assert row["real_runs"] == 1 and row["real_finals_after_kill"] > 0, row
    assert proc.returncode == 0, proc.stdout[-2000:]
