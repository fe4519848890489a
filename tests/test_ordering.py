"""Fan-out ordering: finals strictly by final_index, partials never block, never after their final."""

from __future__ import annotations

from actors.fanout.ordering import SessionOrder
from actors.runtime.text import stable_prefix
from schemas import ResultKind, Transcript

P, F, E = ResultKind.PARTIAL, ResultKind.FINAL, ResultKind.END


def t(seq: int, utt: int, kind: ResultKind, text: str = "", fi: int | None = None) -> Transcript:
    # In these scenarios utterance n's final is the n-th final of the session.
    return Transcript(session_id="s", utterance_id=utt, seq=seq, final_index=fi or utt, kind=kind, partition=0,
                      text=text)


def seqs(out: list) -> list[int]:  # type: ignore[type-arg]
    return [r.seq for r in out]


def test_finals_are_released_in_order() -> None:
    o = SessionOrder("s")
    assert o.offer(t(6, 2, F, "second"), 0) == []
    out = o.offer(t(3, 1, F, "first"), 0)
    assert seqs(out) == [3, 6] and [r.kind for r in out] == [F, F]


def test_partials_do_not_wait_for_missing_partials() -> None:
    o = SessionOrder("s")
    # seq 1 and 2 (older partials) were superseded in STT and never published: nothing waits for them
    assert seqs(o.offer(t(3, 1, P, "hello wor"), 0)) == [3]
    assert seqs(o.offer(t(4, 1, F, "hello world"), 0)) == [4]


def test_older_partial_is_dropped() -> None:
    o = SessionOrder("s")
    o.offer(t(3, 1, P, "the cat sat"), 0)
    assert o.offer(t(2, 1, P, "the cat"), 0) == []


def test_partial_never_follows_its_final() -> None:
    o = SessionOrder("s")
    o.offer(t(4, 1, F, "done"), 0)
    assert o.offer(t(3, 1, P, "late partial"), 0) == []
    assert o.offer(t(4, 1, F, "done"), 0) == []  # redelivered final


def test_partial_of_next_utterance_waits_for_earlier_final() -> None:
    o = SessionOrder("s")
    assert o.offer(t(5, 2, P, "next one"), 0) == []  # final 1 not out yet: held
    assert o.offer(t(6, 2, P, "next one two"), 0) == []  # newer replaces the held one
    out = o.offer(t(4, 1, F, "first"), 0)
    assert seqs(out) == [4, 6]
    assert out[1].text == "next one two"


def test_every_utterance_behind_a_slow_final_keeps_its_partial() -> None:
    """Utterances 2 and 3 both spoke while final 1 was decoding: each shows its newest partial once its turn
    comes, instead of 3's replacing 2's."""
    o = SessionOrder("s")
    assert o.offer(t(5, 2, P, "two"), 0) == []
    assert o.offer(t(6, 2, P, "two more"), 0) == []
    assert o.offer(t(8, 3, P, "three"), 0) == []
    assert seqs(o.offer(t(4, 1, F, "one"), 0)) == [4, 6]  # final 1, then 2's newest partial
    assert seqs(o.offer(t(7, 2, F, "two more words"), 0)) == [7, 8]  # final 2, then 3's partial
    assert seqs(o.offer(t(9, 3, F, "three"), 0)) == [9]


def test_stable_text_is_agreed_prefix() -> None:
    o = SessionOrder("s")
    a = o.offer(t(1, 1, P, "the cat sat"), 0)[0]
    b = o.offer(t(2, 1, P, "the cat sat on the"), 0)[0]
    c = o.offer(t(3, 1, F, "The cat sat on the mat."), 0)[0]
    assert a.stable_text == "" and b.stable_text == "the cat sat" and c.stable_text == c.text
    assert stable_prefix("a b c", "a x c") == "a"


def test_empty_partials_and_silent_finals() -> None:
    o = SessionOrder("s")
    assert o.offer(t(1, 1, P, ""), 0) == []
    assert o.offer(t(2, 1, F, ""), 0) == []  # nothing shown, nothing said
    o.offer(t(3, 2, P, "uh"), 0)
    cleared = o.offer(t(4, 2, F, ""), 0)
    assert len(cleared) == 1 and cleared[0].text == ""  # clears the shown partial


def test_end_comes_after_every_final() -> None:
    o = SessionOrder("s")
    assert o.offer(t(9, 2, E, fi=3), 0) == []
    assert o.offer(t(8, 2, F, "two"), 0) == []
    out = o.offer(t(4, 1, F, "one"), 0)
    assert [r.kind for r in out] == [F, F, E]
    assert o.ended and o.offer(t(10, 3, F, "after end", fi=3), 0) == []


def test_missing_final_is_skipped_after_timeout() -> None:
    o = SessionOrder("s")
    assert o.offer(t(6, 2, F, "two"), now=100.0) == []
    assert o.skip_gap(now=105.0, timeout=10) == []
    assert seqs(o.skip_gap(now=110.5, timeout=10)) == [6]
    assert o.offer(t(3, 1, F, "one, too late"), now=111) == []
