"""The per-session source-language lock for `language: "auto"` (pure logic)."""

from __future__ import annotations

from actors.stt.langlock import LanguageLock


def test_locks_after_confident_agreeing_finals_and_reopens_after_a_long_pause() -> None:
    lock = LanguageLock(lock_prob=0.8, lock_after=2, reopen_pause_s=10.0)
    assert lock.language_for("s", "auto", 0.0) == "auto"
    lock.observe("s", "pt", 0.95, end=3.0)
    assert lock.language_for("s", "auto", 3.5) == "auto"  # one utterance is not enough
    lock.observe("s", "es", 0.85, end=6.0)  # disagreement restarts the streak
    lock.observe("s", "pt", 0.97, end=9.0)
    assert lock.locked("s") is None
    lock.observe("s", "pt", 0.91, end=12.0)
    assert lock.locked("s") == "pt"
    assert lock.language_for("s", "auto", 13.0) == "pt"
    lock.observe("s", "es", 0.99, end=15.0)  # locked: a stray detection does not flip it
    assert lock.language_for("s", "auto", 16.0) == "pt"
    assert lock.language_for("s", "auto", 15.0 + 10.5) == "auto"  # long pause: detect again
    assert lock.locked("s") is None


def test_unconfident_detections_never_lock_and_explicit_language_wins() -> None:
    lock = LanguageLock(lock_prob=0.8, lock_after=2)
    for i in range(5):
        lock.observe("s", "de", 0.5, end=float(i))
    assert lock.locked("s") is None
    assert lock.language_for("s", "fr", 0.0) == "fr"
    lock.observe("t", "en", 0.0, end=1.0)  # not detected (probability 0): ignored
    assert lock.locked("t") is None


def test_bounded_memory() -> None:
    lock = LanguageLock(max_sessions=3)
    for i in range(10):
        lock.observe(f"s{i}", "en", 0.9, end=1.0)
    assert len(lock._sessions) == 3
