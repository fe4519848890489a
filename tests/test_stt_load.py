"""The final lane's measured load (actors/stt/load.py): what the heartbeat announces to the edge's admission and
what thins partials. Pure arithmetic over recorded model calls, on an explicit clock."""

from __future__ import annotations

import pytest

from actors.stt.load import FinalLoad, partial_pause


def test_busy_is_model_seconds_per_second_over_the_window_and_overlapping_calls_add_up() -> None:
    load = FinalLoad(window_s=30.0)
    load.record(2.0, {"a"}, now=100.0)
    load.record(2.0, {"b"}, now=100.0)  # the second slot, at the same time
    assert load.busy(10.0, now=101.0) == pytest.approx(0.4)
    assert load.busy(10.0, now=109.0) == pytest.approx(0.2)  # each call only counts for its part in the window
    assert load.busy(10.0, now=111.0) == 0.0


def test_a_sessions_cost_needs_two_sessions_and_outlives_a_quiet_lane() -> None:
    load = FinalLoad(window_s=30.0)
    load.record(3.0, {"a"}, now=10.0)
    first = load.announce(now=12.0)
    assert first["session_cost"] == "0.0000" and first["final_sessions"] == "1"  # one session says little
    load.record(3.0, {"b"}, now=14.0)
    second = load.announce(now=15.0)
    assert float(second["session_cost"]) == pytest.approx(6.0 / 30 / 2, abs=1e-4)
    assert float(second["final_busy"]) == pytest.approx(0.6)  # the last 10 s: both calls
    quiet = load.announce(now=100.0)
    assert quiet["final_busy"] == "0.000" and quiet["final_sessions"] == "0"
    assert quiet["session_cost"] == second["session_cost"]  # still known when the next session asks to start


def test_partials_yield_more_as_the_final_lane_fills() -> None:
    assert partial_pause(0.2, busy=0.4, thin_above=0.5, max_ratio=3.0) == 0.0
    assert partial_pause(0.2, busy=0.75, thin_above=0.5, max_ratio=3.0) == pytest.approx(0.3)
    assert partial_pause(0.2, busy=1.6, thin_above=0.5, max_ratio=3.0) == pytest.approx(0.6)
    assert partial_pause(0.2, busy=5.0, thin_above=0.0, max_ratio=3.0) == 0.0  # off
