"""A session's vocabulary (issue #35): the glossary Whisper reads, the near-misses corrected, and the bounds."""

from __future__ import annotations

import numpy as np
import pytest

from actors.stt.engine import PROMPT_BUCKETS, SttRequest, WhisperEngine, WhisperOptions
from actors.stt.interface import WordTiming
from actors.stt.models import resolve
from actors.stt.vocabulary import correct_text, correct_words, glossary
from edge.core.commands import MAX_TERM_CHARS, MAX_VOCABULARY, parse_vocabulary
from edge.core.errors import ErrorCode, ProtocolError
from loadtest.speech import clips


def words(text: str, unsure: tuple[str, ...] = ()) -> list[WordTiming]:
    """Timed words as a final has them; those in `unsure` came out improbable."""
    return [WordTiming(w, i * 0.3, i * 0.3 + 0.25, 0.3 if w.strip(".,()").lower() in unsure else 0.95)
            for i, w in enumerate(text.split())]


def spoken(ws: list[WordTiming] | None) -> str | None:
    return None if ws is None else " ".join(w.word for w in ws)


def test_near_misses_the_model_was_unsure_of_take_the_terms_spelling() -> None:
    vocab = ("Plat Chat", "Sideshow", "Abbie", "Claflin")
    said = "We use Plant Chat for that, and the side show was great."
    assert spoken(correct_words(words(said, ("plant",)), vocab)) == \
        "We use Plat Chat for that, and the Sideshow was great."
    assert spoken(correct_words(words("Abby said Clafflin came (plat chat).", ("abby", "clafflin")), vocab)) == \
        "Abbie said Claflin came (Plat Chat)."
    # Heard with confidence: a word that was said, left alone (only the exact letters are respelled).
    assert spoken(correct_words(words(said), vocab)) == "We use Plant Chat for that, and the Sideshow was great."
    assert correct_words(words("He had vanished behind the curtain."), ("Chad", "finished")) is None
    # Partials have no probabilities: exact letters only; their final corrects the rest.
    assert correct_text(said, vocab) == "We use Plant Chat for that, and the Sideshow was great."


@pytest.mark.parametrize("text", [
    "The time has come for Americans to make important decisions about our future.",
    "I can't think of an animal that's less chant like than a slaw.",
    "All nouns alongside the world say for you always begin with a capital letter.",
    "Abstract art is a chat about plants, shows and sides.",
])
def test_words_nobody_meant_stay_as_they_are(text: str) -> None:
    """Terms that sound nothing like the words said change nothing, even where the model was unsure of every
    word; nor do short terms near many words."""
    unrelated = ("Kubernetes", "Prometheus", "Grafana", "Sintra", "Claflin", "Abbie", "Plat Chat", "Sie", "Josh")
    assert correct_text(text, unrelated) == text
    unsure = tuple(w.strip(".,'").lower() for w in text.split())
    assert correct_words(words(text, unsure), unrelated) is None


def test_a_word_the_model_all_but_guessed_may_be_further_off() -> None:
    """Two letters in five from a one-word term: corrected where the model guessed (under 0.35), not where it
    was merely unsure; a word written in pieces is as unsure as its least sure piece."""
    def said(*ws: tuple[str, float]) -> list[WordTiming]:
        return [WordTiming(w, i * 0.3, i * 0.3 + 0.25, p) for i, (w, p) in enumerate(ws)]

    guessed = said(("less", 0.99), ("chant", 0.2), ("like", 0.8), ("than", 0.99), ("a", 0.9), ("slaw.", 0.3))
    assert spoken(correct_words(guessed, ("Chad", "sloth"))) == "less Chad like than a slaw."  # 3 in 5: no
    unsure = said(("less", 0.99), ("chant", 0.5), ("like", 0.8))
    assert correct_words(unsure, ("Chad",)) is None
    # base wrote "Fisich" for Fichte: four letters in ten from Fisichella, but a shorter word, not a misspelling
    assert correct_words(said(("como", 0.97), ("Goat,", 0.68), ("Fisich,", 0.26)), ("Fisichella",)) is None
    pieces = said(("not", 0.98), ("an", 0.89), ("old", 0.52), ("-sposed", 0.64), ("young", 0.96), ("man.", 1.0))
    assert spoken(correct_words(pieces, ("disposed",))) == "not an old -disposed young man."
    assert correct_words(said(("old", 0.95), ("-sposed", 0.64)), ("disposed",)) is None


def test_a_corrected_run_of_words_becomes_one_timed_word() -> None:
    ws = [WordTiming("We", 0.0, 0.2, 0.9), WordTiming("use", 0.2, 0.4, 0.9), WordTiming("Plant", 0.5, 0.8, 0.4),
          WordTiming("Chat,", 0.8, 1.1, 0.7), WordTiming("daily.", 1.2, 1.6, 0.9)]
    fixed = correct_words(ws, ("Plat Chat",))
    assert fixed == [ws[0], ws[1], WordTiming("Plat Chat,", 0.5, 1.1, 0.4), ws[4]]
    assert correct_words(ws, ("Grafana",)) is None


def test_bounds() -> None:
    assert parse_vocabulary([" Ana  Lúcia ", "Tolk", "Tolk"], ErrorCode.INVALID_VOCABULARY) == ("Ana Lúcia", "Tolk")
    assert parse_vocabulary("Tolk", ErrorCode.INVALID_VOCABULARY) == ("Tolk",)
    for bad in ([f"term{i}" for i in range(MAX_VOCABULARY + 1)], ["x" * (MAX_TERM_CHARS + 1)], [""], [3], {"a": 1}):
        with pytest.raises(ProtocolError) as err:
            parse_vocabulary(bad, ErrorCode.INVALID_VOCABULARY)
        assert err.value.code is ErrorCode.INVALID_VOCABULARY and err.value.message


@pytest.fixture(scope="module")
def tiny() -> WhisperEngine:
    return WhisperEngine(resolve("tiny.en", "/nonexistent"), WhisperOptions(beam_size=5))


def test_the_glossary_leads_the_prompt_and_keeps_sessions_batched(tiny: WhisperEngine) -> None:
    glossary = tiny.context_tokens("", "Plat Chat, Sideshow")
    assert glossary and len(glossary) < PROMPT_BUCKETS[1]
    text = "and so my fellow Americans ask not what your country can do for you " * 8
    both = tiny.context_tokens(text, "Plat Chat, Sideshow")
    assert both[: len(glossary)] == glossary and len(both) in PROMPT_BUCKETS  # whole glossary, then the text's tail
    assert both[len(glossary):] == tiny.context_tokens(text)[-(len(both) - len(glossary)):]


def test_whisper_spells_a_name_it_has_read(tiny: WhisperEngine) -> None:
    """Real speech: tiny.en hears "sloth" as "slaw" unless the session's vocabulary has it."""
    c = next(c for c in clips("en") if c.name == "en_conversational_multilingual_ipa.wav")
    pcm, _ = c.pcm16()
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    plain, with_vocab, unrelated = tiny.transcribe_batch([
        SttRequest(audio, "en", True), SttRequest(audio, "en", True, hotwords="Sloth"),
        SttRequest(audio, "en", True, hotwords="Kubernetes, Grafana")], 30.0, 5)
    assert "sloth" not in plain.text.lower() and "sloth" in with_vocab.text.lower(), (plain.text, with_vocab.text)
    assert "sloth" not in unrelated.text.lower()


def test_the_glossary_ends_as_a_sentence_so_whisper_does_not_skip_its_last_term(tiny: WhisperEngine) -> None:
    """Real speech that opens with a term: after a bare list ending in it, tiny.en takes the speech for the list
    going on and leaves the term out ("so this is the sick corpus"); after the glossary it writes it."""
    c = next(c for c in clips("en") if c.name.startswith("en_spontaneous_cold"))
    pcm, _ = c.pcm16()
    audio = np.frombuffer(pcm, "<i2").astype(np.float32)[: 8 * 16000] / 32768
    assert glossary(("Alright", "Kubernetes")) == "Alright, Kubernetes." and glossary(()) == ""
    bare, listed = tiny.transcribe_batch([SttRequest(audio, "en", True, hotwords="alright"),
                                          SttRequest(audio, "en", True, hotwords=glossary(("alright",)))], 30.0, 5)
    assert not bare.text.lower().startswith("alright"), bare.text
    assert listed.text.lower().startswith("alright"), listed.text


def test_the_benchmark_shows_what_a_missed_word_came_out_as() -> None:
    """loadtest.vocabulary prints, per missed word, what the finals have in its place."""
    from loadtest.vocabulary import heard_as

    assert heard_as("From Bunker Hill to Baghdad, the men", "from Bucker Hill to Baghdad, the men", "Bunker",
                    "en") == "from bucker hill"
    assert heard_as("Giancarlo Fisichella perdeu o controle", "perdeu o controle", "Fisichella", "pt") == "[ ] perdeu"
    assert heard_as("less chad like than a sloth", "less chad like than a sloth", "chad", "en") == "less chad like"
