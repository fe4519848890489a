"""Fan-out ordering: released strictly by seq, partial never after its final, gaps bounded."""

from __future__ import annotations

from actors.fanout.ordering import SessionOrder, stable_prefix
from schemas import ResultKind, Transcript


def t(seq: int, utt: int, kind: ResultKind, text: str = "", stale: bool = False) -> Transcript:
    return Transcript(session_id="s", utterance_id=utt, seq=seq, kind=kind, partition=0, text=text, stale=stale)


P, F, E = ResultKind.PARTIAL, ResultKind.FINAL, ResultKind.END


def test_out_of_order_is_released_in_order() -> None:
    o = SessionOrder("s")
    assert o.offer(t(3, 1, F, "hello world"), 0) == []
    assert o.offer(t(2, 1, P, "hello wor"), 0) == []
    out = o.offer(t(1, 1, P, "hello"), 0)
    assert [r.seq for r in out] == [1, 2, 3]
    assert [r.kind for r in out] == [P, P, F]


def test_stable_text_is_agreed_prefix() -> None:
    o = SessionOrder("s")
    a = o.offer(t(1, 1, P, "the cat sat"), 0)[0]
    b = o.offer(t(2, 1, P, "the cat sat on the"), 0)[0]
    c = o.offer(t(3, 1, F, "The cat sat on the mat."), 0)[0]
    assert a.stable_text == "" and b.stable_text == "the cat sat" and c.stable_text == c.text
    assert stable_prefix("a b c", "a x c") == "a"


def test_stale_and_empty_partials_are_skipped_but_advance() -> None:
    o = SessionOrder("s")
    out = o.offer(t(1, 1, P, stale=True), 0) + o.offer(t(2, 1, P, ""), 0) + o.offer(t(3, 1, F, "ok"), 0)
    assert [(r.seq, r.kind) for r in out] == [(3, F)]


def test_partial_never_follows_final_and_duplicates_dropped() -> None:
    o = SessionOrder("s")
    o.offer(t(1, 1, F, "done"), 0)
    assert o.offer(t(1, 1, F, "done"), 0) == []  # redelivery
    # A (buggy or replayed) partial of a finalised utterance is never shown.
    o.next_seq = 2
    assert o.offer(t(2, 1, P, "late partial"), 0) == []


def test_empty_final_clears_a_shown_partial_only() -> None:
    o = SessionOrder("s")
    o.offer(t(1, 1, P, "uh"), 0)
    cleared = o.offer(t(2, 1, F, ""), 0)
    assert len(cleared) == 1 and cleared[0].text == ""
    assert o.offer(t(3, 2, F, ""), 0) == []  # nothing shown, nothing said


def test_end_closes_session() -> None:
    o = SessionOrder("s")
    out = o.offer(t(2, 1, E), 0) + o.offer(t(1, 1, F, "last"), 0)
    assert [r.kind for r in out] == [F, E]
    assert o.ended and o.offer(t(3, 2, F, "after end"), 0) == []


def test_gap_is_skipped_after_timeout() -> None:
    o = SessionOrder("s")
    assert o.offer(t(2, 1, F, "two"), now=100.0) == []
    assert o.skip_gap(now=105.0, timeout=10) == []
    out = o.skip_gap(now=110.5, timeout=10)
    assert [r.seq for r in out] == [2]
