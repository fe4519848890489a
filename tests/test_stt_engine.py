"""The faster-whisper adapter with real weights: accuracy, guards, batching, word timings, models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from actors.stt.engine import SttRequest, WhisperEngine
from actors.stt.models import ModelError, resolve
from loadtest.speech import Clip, at_peak, clips
from loadtest.wer import corpus_wer


@pytest.fixture(scope="module")
def tiny() -> WhisperEngine:
    return WhisperEngine(resolve("tiny.en", "/nonexistent"))


def audio(c: Clip, peak_dbfs: float | None = None) -> np.ndarray:
    """The clip as Whisper reads it; with `peak_dbfs`, played with its peak there (loadtest.speech.at_peak)."""
    pcm, _ = c.pcm16()
    return np.frombuffer(at_peak(pcm, peak_dbfs), "<i2").astype(np.float32) / 32768


def clip(prefix: str) -> Clip:
    return next(c for c in clips() if c.name.startswith(prefix))


def test_transcribes_real_speech(tiny: WhisperEngine) -> None:
    c = clip("en_jfk")
    r = tiny.transcribe_batch([SttRequest(audio(c), "en", word_timestamps=True)])[0]
    assert corpus_wer([(c.reference, r.text)]) < 0.1
    assert r.language == "en" and r.rejected is None
    starts = [w.start for w in r.words]
    assert starts == sorted(starts) and r.words[-1].end <= c.seconds + 0.5
    assert " ".join(w.word for w in r.words).split() == r.text.split()


def test_batch_equals_singles(tiny: WhisperEngine) -> None:
    cs = [clip("en_librispeech_61"), clip("en_fleurs_003"), clip("en_ljspeech_LJ050")]
    reqs = [SttRequest(audio(c), "en") for c in cs]
    batched = [r.text for r in tiny.transcribe_batch(reqs, window_s=30)]
    single = [tiny.transcribe_batch([q], window_s=30)[0].text for q in reqs]
    assert batched == single


def test_words_in_a_batch_mixing_finals_and_partials(tiny: WhisperEngine) -> None:
    """A final batched with a partial (first partials ride with finals) gets the same word timings."""
    final, partial = audio(clip("en_jfk")), audio(clip("en_fleurs_003"))[: 16000 * 2]
    alone = tiny.transcribe_batch([SttRequest(final, "en", True)], window_s=10)[0]
    mixed = tiny.transcribe_batch([SttRequest(partial, "en", False), SttRequest(final, "en", True)], window_s=10)
    assert mixed[0].words == [] and mixed[0].text
    assert mixed[1].text == alone.text
    assert [w.word for w in mixed[1].words] == [w.word for w in alone.words]
    assert all(abs(a.start - b.start) < 0.05 for a, b in zip(mixed[1].words, alone.words, strict=True))


def test_prompts_of_mixed_lengths_in_one_batch(tiny: WhisperEngine) -> None:
    """CTranslate2 batches only equal-length prompts: the engine groups by a few fixed lengths, so a batch mixing
    sessions with no, short and long previous text gives each the text it would get alone, in order."""
    cs = [clip("en_librispeech_61"), clip("en_fleurs_003"), clip("en_jfk")]
    prompts = ["", "He was not an ill disposed young man.", clip("en_gb0").reference[:1000]]
    assert [len(tiny.context_tokens(p)) for p in prompts] == [0, 8, 128]
    reqs = [SttRequest(audio(c), "en", True, prompt=p) for c, p in zip(cs, prompts, strict=True)]
    batched = tiny.transcribe_batch(reqs, window_s=30, beam_size=5)
    single = [tiny.transcribe_batch([q], window_s=30, beam_size=5)[0] for q in reqs]
    assert [r.text for r in batched] == [r.text for r in single]
    for c, r in zip(cs, batched, strict=True):
        assert corpus_wer([(c.reference, r.text)]) < 0.15, r.text  # the prompt conditions, it is not repeated
        assert r.words and " ".join(w.word for w in r.words).split() == r.text.split()


def test_a_final_over_the_full_window_reads_a_soft_head_as_offline_whisper_does(tiny: WhisperEngine) -> None:
    """Unscripted speech that starts mid-phrase ("… finish it, he just decided to fail it instead"): decoded with
    timestamp tokens, as offline Whisper decodes, over the full window, the head is read; the same final over a
    fitted window (no timestamps there) still reads the rest, with word timings inside the audio."""
    c = clip("en_conversational_multilingual_ipa_us_2")
    full = tiny.transcribe_batch([SttRequest(audio(c), "en", word_timestamps=True)], window_s=30)[0]
    assert full.text.lower().startswith("finish it"), full.text
    assert " ".join(w.word for w in full.words).split() == full.text.split()
    assert all(0 <= w.start <= w.end <= c.seconds + 0.5 for w in full.words)
    fitted = tiny.transcribe_batch([SttRequest(audio(c), "en", word_timestamps=True)], window_s=15)[0]
    assert "decided to fail it instead" in fitted.text, fitted.text
    partial = tiny.transcribe_batch([SttRequest(audio(c), "en")], window_s=30)[0]
    assert "decided to fail it instead" in partial.text and not partial.words


def test_fitted_window_keeps_accuracy(tiny: WhisperEngine) -> None:
    cs = [c for c in clips("en") if c.seconds < 14]
    pairs = [(c.reference, tiny.transcribe_batch([SttRequest(audio(c), "en")], window_s=10)[0].text) for c in cs]
    assert corpus_wer(pairs) < 0.15
    assert WhisperEngine.window_frames(300, 10) == 1000
    assert WhisperEngine.window_frames(1450, 10) == 1600
    assert WhisperEngine.window_frames(1450, 30) == 3000


def test_silence_and_noise_give_no_text(tiny: WhisperEngine) -> None:
    rng = np.random.default_rng(0)
    reqs = [
        SttRequest(np.zeros(16000 * 3, np.float32), "en", True),
        SttRequest((rng.standard_normal(16000 * 3) * 0.1).astype(np.float32), "en", True),
        SttRequest((rng.standard_normal(16000 * 2) * 0.003).astype(np.float32), "en", True),
    ]
    for r in tiny.transcribe_batch(reqs):
        assert r.text == "" and r.words == [] and r.rejected


def test_quiet_speech_reads_as_at_its_recorded_level(tiny: WhisperEngine) -> None:
    """Speech peaking at -60 dBFS (a distant or quietly set microphone) is raised before Whisper reads it;
    unraised, Whisper loses and mishears words (tiny.en, offline alike)."""
    cs = [clip(p) for p in ("en_librispeech_61", "en_fleurs_001", "en_fleurs_004",
                            "en_librivox_sense_and_sensibility_0890")]

    def wer(dbfs: float | None, gain_db: float) -> float:
        tiny.opts = dataclasses.replace(tiny.opts, level_max_gain_db=gain_db)
        reqs = [SttRequest(audio(c, dbfs), "en") for c in cs]
        texts = [r.text for r in tiny.transcribe_batch(reqs, window_s=30, beam_size=5)]
        return corpus_wer([(c.reference, t) for c, t in zip(cs, texts, strict=True)])

    defaults = tiny.opts
    on = defaults.level_max_gain_db
    try:
        recorded, raised, unraised = wer(None, on), wer(-60, on), wer(-60, 0)
    finally:
        tiny.opts = defaults
    assert raised <= recorded + 0.02, (recorded, raised)
    assert unraised > raised + 0.05, (unraised, raised)
    loud = audio(clip("en_jfk"))
    assert tiny.leveled(loud) is loud  # never lowered
    faint = audio(clip("en_jfk"), -80)
    assert np.abs(tiny.leveled(faint)).max() == pytest.approx(np.abs(faint).max() * 100, rel=1e-4)  # 40 dB cap


def test_model_resolution_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a folder"):
        resolve(str(tmp_path / "large-v3"), str(tmp_path))  # a path, not the hub name (tests/test_models.py)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="missing"):
        resolve(str(tmp_path / "empty"), str(tmp_path))


def test_base_model_is_assembled_and_multilingual(tmp_path: Path) -> None:
    path = resolve("base", str(tmp_path))
    assert (path / "model.bin").stat().st_size > 140_000_000
    assert resolve("base", str(tmp_path)) == path  # second call reuses the joined file
    engine = WhisperEngine(path)
    assert engine.multilingual
    de = clip("de_fleurs_001")
    en = clip("en_jfk")
    out = engine.transcribe_batch([SttRequest(audio(de), "auto", True), SttRequest(audio(en), "auto", True)])
    assert [r.language for r in out] == ["de", "en"]
    for r, c in ((out[0], de), (out[1], en)):  # aligned per language over one shared encoder pass
        assert r.words and r.words[-1].end <= c.seconds + 0.5
        assert "".join(w.word for w in r.words) == "".join(r.text.split())  # "T-Rex" may be two words
    assert corpus_wer([(en.reference, out[1].text)]) < 0.2
    assert corpus_wer([(de.reference, out[0].text)], "de") < 0.5


def test_left_context_reads_a_final_as_the_continuation_of_the_previous_one(tiny: WhisperEngine) -> None:
    """A clip split between two words: the second half decoded with the first half's audio and words ahead of it
    gives the second half's words only (the prefix is not echoed), timed within its own audio, and the two
    halves together read as the reference; a batch mixing it with a request without context decodes each as
    alone."""
    from actors.stt.finals import LeftContexts

    c = clip("en_librispeech_2412")
    a = audio(c)
    whole = tiny.transcribe_batch([SttRequest(a, "en", True)], 30.0, 5)[0]
    mid = len(whole.words) // 2
    cut = (whole.words[mid - 1].end + whole.words[mid].start) / 2
    head, tail = a[: int(cut * 16000)], a[int(cut * 16000):]
    first = tiny.transcribe_batch([SttRequest(head, "en", True)], 30.0, 5)[0]
    left = LeftContexts(8.0)
    left.add("s", "en", (head * 32767).astype(np.int16), first.words, 0.0)
    assert left.left("s", "de", cut) is None and left.left("s", "en", cut + 5.0) is None  # language, gap
    assert not left.has("s", "de", cut) and not left.has("s", "en", cut + 5.0) and left.has("s", "en", cut)
    context = left.left("s", "en", cut)
    assert context is not None and context.words and context.seconds <= 8.0 + 0.1
    req = SttRequest(tail, "en", True, prompt=first.text, context=context)
    second = tiny.transcribe_batch([req], 30.0, 5)[0]
    assert second.rejected is None and second.words
    assert second.context_s == context.seconds  # read, as tolk_stt_left_context_total{outcome="read"} counts
    # No room in the window for it (the request fills a 15 s window): dropped, and the result says so.
    no_room = SttRequest(np.concatenate([tail] * 4)[: 16000 * 14], "en", True, prompt=first.text, context=context)
    assert tiny.transcribe_batch([no_room], 15.0, 5)[0].context_s == 0.0
    assert all(0.0 <= w.start <= w.end <= len(tail) / 16000 + 0.2 for w in second.words)
    assert " ".join(w.word for w in second.words).split() == second.text.split()
    assert corpus_wer([(c.reference, f"{first.text} {second.text}")]) < 0.1, (first.text, second.text)
    other = SttRequest(audio(clip("en_jfk")), "en", True, prompt=first.text)
    batched = tiny.transcribe_batch([req, other], 30.0, 5)
    assert [r.text for r in batched] == [second.text, tiny.transcribe_batch([other], 30.0, 5)[0].text]


def test_left_context_tail_cuts_between_words() -> None:
    from actors.stt.engine import _rereads
    from actors.stt.interface import LeftContext, WordTiming

    words = tuple(WordTiming(w, s, s + 0.4, 0.9) for w, s in (("one", 0.5), ("two", 2.0), ("three", 5.0)))
    ctx = LeftContext(np.zeros(16000 * 7, dtype=np.float32), words, "en", gap_s=0.5)
    assert ctx.tail(10.0) is ctx and ctx.text == "one two three"
    short = ctx.tail(4.0)  # keeps from 3.5 s: only "three", cut between "two" and "three"
    assert short is not None and short.text == "three"
    assert abs(len(short.audio) / 16000 - (7.0 - 3.7)) < 0.01 and abs(short.words[0].start - 1.3) < 0.01
    assert ctx.tail(0.5) is None
    assert _rereads("a grande pirâmide é uma das", "Construída, a grande pirâmide é uma das muitas")
    assert not _rereads("meus pensamentos e orações", "neste trágico incidente, meus")
