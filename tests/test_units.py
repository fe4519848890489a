"""Small pure pieces: hallucination guards, WER normalisation, settings, partitions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from actors.runtime.partition import owned_partitions, partition_for, valid_session_id
from actors.runtime.settings import SettingsError, load
from actors.stt.guards import collapse_repeats, compression_ratio, reject_reason
from loadtest.wer import corpus_wer, normalise


def test_collapse_repeats() -> None:
    assert collapse_repeats("thank you thank you thank you thank you") == "thank you"
    assert collapse_repeats("I I I I think so") == "I think so"
    assert collapse_repeats("we will we will rock you") == "we will we will rock you"  # twice is speech


def test_reject_reasons() -> None:
    assert reject_reason("", 0.0, 0.0, 0.6, -1.0, 2.4) == "empty"
    assert reject_reason("Thank you.", 0.9, -1.2, 0.6, -1.0, 2.4) == "no_speech"
    assert reject_reason("Thank you.", 0.9, -0.3, 0.6, -1.0, 2.4) is None  # confident speech wins
    looped = "la " * 200
    assert compression_ratio(looped) > 2.4
    assert reject_reason(looped, 0.0, -0.2, 0.6, -1.0, 2.4) == "repetition"


def test_wer_normalisation() -> None:
    assert normalise("In 1813, he paid $25!") == "in eighteen thirteen he paid twenty five".split()
    assert corpus_wer([("IN EIGHTEEN THIRTEEN", "In 1813.")]) == 0
    assert corpus_wer([("a b c d", "a x c")]) == 0.5


@dataclass
class Demo:
    port: int = 1
    ratio: float = 0.5
    on: bool = False
    name: str = "x"


def test_settings_env_overrides() -> None:
    cfg = load(Demo, env={"TOLK_PORT": "9000", "TOLK_RATIO": "0.25", "TOLK_ON": "true", "OTHER": "1"})
    assert cfg == Demo(port=9000, ratio=0.25, on=True, name="x")
    assert load(Demo, env={"TOLK_PORT": "9000"}, port=7).port == 7
    with pytest.raises(SettingsError):
        load(Demo, env={"TOLK_PORT": "many"})


def test_partitions() -> None:
    assert partition_for("abc", 8) == partition_for("abc", 8)
    assert {p for i in range(3) for p in owned_partitions(8, 3, i)} == set(range(8))
    assert owned_partitions(8, 3, 0) == [0, 3, 6]
    with pytest.raises(ValueError):
        owned_partitions(8, 2, 2)
    assert valid_session_id("a-B_9") and not valid_session_id("a.b") and not valid_session_id("")
