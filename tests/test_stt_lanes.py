"""The final lane's slots: which segments the next model call takes while others are in flight."""

from __future__ import annotations

from typing import Any

from actors.runtime import pools
from actors.runtime.actor import RuntimeSettings
from actors.runtime.bus import Bus
from actors.runtime.consumer import Delivery
from actors.stt.actor import FULL_WINDOW_EXTRA, SttActor, SttSettings
from actors.stt.engine import SttResult, WhisperEngine, WhisperOptions, WordTiming
from actors.stt.models import resolve
from schemas import Segment, SegmentKind


def _delivery(session: str, utterance: int, seq: int, samples: int, speculative: bool) -> Delivery[Segment]:
    seg = Segment(session_id=session, utterance_id=utterance, seq=seq, final_index=utterance,
                  kind=SegmentKind.FINAL, audio=b"\0\0" * samples, start=0.0, end=samples / 16000, language="en",
                  speech_end_wall=float(seq), partition=0, speculative=speculative)
    return Delivery(seg, raw=None)  # type: ignore[arg-type]  # selection never settles a message


def _taken(step: Any) -> str:
    """Which call a step is, without running it."""
    name: str = step.cr_code.co_name
    step.close()
    return name


async def test_a_final_does_not_wait_for_another_sessions_early_decode(bus: Bus) -> None:
    stt = SttActor(bus, RuntimeSettings(), SttSettings(), pools.load({}).serving("en"))
    early = _delivery("a", 1, 5, 16000, speculative=True)
    stt._finals.append(early)
    assert _taken(stt._final_step(speculative=True)) == "_early_call"
    assert not stt._finals and stt._early_running == {stt._early_key(early.msg)}

    # Slot two, while that early decode runs: b's final is taken, a's waits for the decode of its own samples.
    final_a, final_b = _delivery("a", 1, 6, 16000, False), _delivery("b", 1, 3, 8000, False)
    stt._finals.extend([final_a, final_b])
    step = stt._final_step(speculative=False)
    assert step is not None and step.cr_frame.f_locals["finals"] == [final_b]
    step.close()
    assert list(stt._finals) == [final_a]
    assert stt._final_step(speculative=False) is None
    assert stt._final_step(speculative=True) is None  # a final is queued: no new early decode starts

    # Its speech went on (other samples): the running early decode cannot serve it, so it is decoded now.
    stt._finals.clear()
    longer = _delivery("a", 1, 7, 24000, False)
    stt._finals.append(longer)
    step = stt._final_step(speculative=False)
    assert step is not None and step.cr_frame.f_locals["finals"] == [longer]
    step.close()

    # Once the early decode is done, a's final is taken, with a's queued speculative segments to skip.
    stt._early_running.clear()
    later = _delivery("a", 1, 8, 16000, speculative=True)
    stt._finals.extend([final_a, later])
    step = stt._final_step(speculative=False)
    assert step is not None
    assert step.cr_frame.f_locals["finals"] == [final_a] and step.cr_frame.f_locals["skipped"] == [later]
    step.close()
    assert not stt._finals


async def test_early_decodes_start_only_on_an_idle_lane(bus: Bus) -> None:
    stt = SttActor(bus, RuntimeSettings(), SttSettings(), pools.load({}).serving("en"))
    stt._finals.extend([_delivery("a", 1, 1, 8000, True), _delivery("a", 1, 2, 12000, True)])
    assert stt._final_step(speculative=False) is None  # a call is in the lane: the free slot is kept for finals
    step = stt._final_step(speculative=True)
    assert step is not None and _taken(step) == "_early_call"
    assert len(stt._early_running) == 1 and not stt._finals  # the newest of the utterance; the older one skipped


async def test_finals_use_the_full_window_only_where_it_costs_little(bus: Bus) -> None:
    """The full window's price is measured with the real model at start; over the limit, finals on an idle lane
    keep beam search over the loaded tier's fitted window."""
    engine = WhisperEngine(resolve("tiny.en", "/nonexistent"), WhisperOptions(workers=1))
    for limit, window in ((1000.0, 30.0), (-1.0, 15.0)):
        stt = SttActor(bus, RuntimeSettings(), SttSettings(full_window_extra_s=limit), pools.load({}).serving("en"))
        try:
            await stt._price_full_window(engine)
            assert stt._final_quality(0) == (window, 5, True)
            assert FULL_WINDOW_EXTRA.labels("en")._value.get() > 0.0  # 30 s of encoder input costs more than 15 s
        finally:
            stt.final_lane.shutdown()
            stt.partial_lane.shutdown()


def _partial(session: str, utterance: int, seq: int, end: float = 0.5) -> Delivery[Segment]:
    seg = Segment(session_id=session, utterance_id=utterance, seq=seq, final_index=utterance,
                  kind=SegmentKind.PARTIAL, audio=b"\0\0" * int(16000 * end), start=0.0, end=end, language="en",
                  speech_end_wall=float(seq), partition=0)
    return Delivery(seg, raw=None)  # type: ignore[arg-type]  # settling None fails quietly (suppressed)


async def test_an_utterance_whose_final_is_queued_still_shows_its_first_partial(bus: Bus) -> None:
    """Under load a final can queue before its utterance showed any text: the partial lane leaves the newest
    partial for the finals' call instead of dropping it, and drops the rest as before."""
    stt = SttActor(bus, RuntimeSettings(), SttSettings(), pools.load({}).serving("en"))
    try:
        stt._finals.extend([_delivery("a", 1, 9, 16000, False), _delivery("b", 1, 9, 16000, False)])
        stt._mark(_partial("b", 1, 4).msg, final=False, shown=True)  # b showed text already
        older, newest, shown_b = _partial("a", 1, 2), _partial("a", 1, 5), _partial("b", 1, 6)
        other = _partial("c", 1, 3)
        stt._partials.extend([older, newest, shown_b, other])
        assert await stt._fresh_partials() == [other]
        assert list(stt._partials) == [newest]  # older and b's are settled as stale
        assert await stt._fresh_partials() == [] and list(stt._partials) == [newest]
        assert stt._first_partials(list(stt._finals)) == [newest] and not stt._partials

        # A partial whose decode came out empty showed nothing: the utterance is still owed one.
        stt._mark(_partial("c", 1, 3).msg, final=False, shown=False)
        stt._finals.append(_delivery("c", 1, 9, 16000, False))
        again = _partial("c", 1, 4)
        stt._partials.append(again)
        assert await stt._fresh_partials() == [] and stt._first_partials([stt._finals[-1]]) == [again]
    finally:
        stt.final_lane.shutdown()
        stt.partial_lane.shutdown()


async def test_a_first_partial_that_reads_as_nothing_shows_its_finals_words(bus: Bus) -> None:
    """Seen in test_e2e under load: "uh I I still think it's a very good team…" — the first partial, decoded with
    its final, read as nothing on its 1.5 s, so the utterance showed no text before its final. It shows the final's
    words that end within its audio; one of another utterance, or with no such words, stays empty."""
    stt = SttActor(bus, RuntimeSettings(), SttSettings(), pools.load({}).serving("en"))
    try:
        final, first, other = _delivery("a", 1, 9, 16000 * 3, False), _partial("a", 1, 5, 1.5), _partial("b", 1, 5, 1.5)
        words = [WordTiming(w, a, b, 0.9) for w, a, b in (("very", 0.2, 0.6), ("good", 0.6, 1.2), ("team", 1.3, 2.0))]
        decoded = SttResult("very good team", "en", 0.0, -0.2, words)
        empty = SttResult("", "en", 0.0, -10.0, rejected="empty")
        out = stt._filled_first_partials([first, other, final], [empty, empty, decoded])
        assert out[0].text == "very good" and out[0].words == []
        assert out[1].text == "" and out[2] is decoded
        late = _partial("a", 1, 5, 0.3)
        assert stt._filled_first_partials([late, final], [empty, decoded])[0].text == ""
    finally:
        stt.final_lane.shutdown()
        stt.partial_lane.shutdown()
