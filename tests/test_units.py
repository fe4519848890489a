"""Small pure pieces: hallucination guards, WER normalisation, settings, partitions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from actors.runtime.partition import owned_partitions, partition_for, valid_session_id
from actors.runtime.settings import SettingsError, load
from actors.stt.finals import EarlyDecodes, PromptContext, early_key
from actors.stt.guards import (
    collapse_repeats,
    compression_ratio,
    looped,
    reject_reason,
    repeated_edge,
    repeated_head,
)
from loadtest.wer import Counts, corpus_wer, counts, normalise
from schemas import Segment, SegmentKind


def test_a_final_does_not_start_with_what_the_last_one_said() -> None:
    """Seen streaming the radio address under load: the second final began with the whole first one again."""
    before = "Good morning. This Tuesday is election day."
    said = "Good morning. This Tuesday is election day. After months of spirited debate".split()
    assert repeated_head(said, before) == 7
    assert repeated_head("election day. After months".split(), before) == 0  # 2 words: a phrase said again
    assert repeated_head("This Tuesday is election day, and".split(), "so " + before) == 5
    assert repeated_head("After months of debate".split(), before) == 0
    assert repeated_head("Good morning.".split(), "") == 0


def test_a_word_cut_at_the_boundary_is_not_said_by_both_finals() -> None:
    """Seen streaming the unscripted dev clip: "… a lot different than me." then "me uh acoustic corpus", the "me"
    ending 0.4 s into a final whose speech began 0.8 s in (its pre-roll, read with the left context)."""
    before = "I have a cold so this probably sounds a lot different than me."
    head = "me uh acoustic corpus.".split()
    assert repeated_edge(head, [0.40, 0.60, 1.04, 1.50], before, onset=0.8 + 0.25) == 1
    # the same word said after the speech began is the speaker's
    assert repeated_edge(head, [1.30, 1.50, 1.90, 2.20], before, onset=0.8 + 0.25) == 0
    # two words, in order, at the previous final's very end; not a word from earlier in it
    assert repeated_edge("than me, uh".split(), [0.2, 0.4, 0.6], before, onset=1.0) == 2
    assert repeated_edge("cold, uh".split(), [0.2, 0.4], before, onset=1.0) == 0
    assert repeated_edge(head, [0.4, 0.6, 1.0, 1.5], "", onset=1.0) == 0


def test_a_phrase_looped_on_in_more_words_than_the_speech_holds_is_dropped() -> None:
    """Seen streaming the radio address with a vocabulary (loadtest.vocabulary): the first final, 2.27 s of audio,
    came back as the sentence twice and a word of a third."""
    loop = "Good morning. This Tuesday is election day. Good morning. This Tuesday is election day. Good".split()
    assert looped(loop, 2.1) == (7, 15)
    assert looped(loop, 4.0) is None  # 15 words in 4 s of speech: a speaker could have said it twice
    # said again by a speaker at a speaking pace, or a short phrase twice: kept
    assert looped("I know what you mean, I know what you mean".split(), 3.0) is None
    assert looped("thank you so much thank you so much".split(), 2.5) is None
    assert looped("we will rock you we will rock you and then we go home".split(), 2.0) == (4, 8)


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
    # Whisper's English normaliser: numbers as digits, British spellings and contractions folded.
    assert normalise("In eighteen thirteen, he paid twenty-five dollars!") == normalise("In 1813 he paid $25.")
    assert corpus_wer([("IN EIGHTEEN THIRTEEN", "In 1813.")]) == 0
    assert corpus_wer([("the colour of it", "The color of it.")]) == 0
    assert corpus_wer([("a b c d", "a x c")]) == 0.5
    assert counts("a b c d", "a x c") == Counts(substitutions=1, deletions=1, insertions=0, words=4)
    assert counts("a b", "") == Counts(deletions=2, words=2)
    # Other languages: case and punctuation only; words are not rewritten.
    assert normalise("Über den Fluß, sagte er.", "de") == ["über", "den", "fluß", "sagte", "er"]
    assert corpus_wer([("Está bien.", "esta bien")], "es") == 0.5


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


def test_listener_view_unions_targets_and_ages_out_dead_edges() -> None:
    import time

    from actors.runtime.listeners import ListenerView, listener_key
    from schemas import ListenerRecord, encode

    view = ListenerView(stale_s=60)
    now = time.time()
    view.apply(listener_key("s", "a"), encode(ListenerRecord(stream_id="s", listener_id="a", targets=("de", "pt"),
                                                             updated_at=now)))
    view.apply(listener_key("s", "b"), encode(ListenerRecord(stream_id="s", listener_id="b", targets=("fr",),
                                                             translate_partials=True, updated_at=now)))
    view.apply(listener_key("s", "dead"), encode(ListenerRecord(stream_id="s", listener_id="dead", targets=("ja",),
                                                                updated_at=now - 120)))
    view.apply(listener_key("s", "junk"), b"\x00 not msgpack")
    assert view.targets("s") == ("de", "fr", "pt")  # the dead edge's record no longer counts
    assert view.targets("s", partial=True) == ("fr",)
    assert view.listeners("s") == 2 and view.targets("other") == ()  # the stale one is not counted
    view.apply(listener_key("s", "a"), None)
    view.apply(listener_key("s", "b"), None)
    view.apply(listener_key("s", "dead"), None)
    assert view.targets("s") == () and view.listeners("s") == 0


def test_subtitle_formats_are_ordered_and_well_formed() -> None:
    from edge.http.formats import Cue, render, srt, vtt

    cues = [Cue(3.5, 5.0, " second "), Cue(0.2, 3.9, "first"), Cue(6.0, 6.0, "instant"), Cue(7.0, 8.0, "  ")]
    assert srt(cues) == ("1\n00:00:00,200 --> 00:00:03,900\nfirst\n\n"
                         "2\n00:00:03,900 --> 00:00:05,000\nsecond\n\n"
                         "3\n00:00:06,000 --> 00:00:06,001\ninstant\n")
    assert vtt([Cue(3725.5, 3726.25, "a --> b")]) == "WEBVTT\n\n01:02:05.500 --> 01:02:06.250\na --&gt; b\n"
    body, ctype = render(cues, "verbose_json", "en", 8.0)
    assert isinstance(body, dict) and ctype == "application/json"
    assert [s["text"] for s in body["segments"]] == ["first", "second", "instant"] and body["text"] == \
        "first second instant"
    translated = srt([Cue(0, 1, "hello", translations={"pt": "olá"})], translation="pt")
    assert "olá" in translated


def test_a_multichannel_files_cues_say_their_channel() -> None:
    """A multichannel upload's finals (`channel_cue`): each cue's speaker is its channel (`ch1`, `ch1 S2` with
    diarization) in SRT / WebVTT, JSON segments and words carry `channel`, and each channel's own text is given
    apart from the time-ordered one; one-channel output is as before."""
    from edge.core.files import channel_cue
    from edge.http.formats import Cue, render
    from schemas import ClientResult, ResultKind, Word

    def final(channel: int, start: float, text: str, speaker: str = "") -> ClientResult:
        words = tuple(Word(w, start + i * 0.4, start + i * 0.4 + 0.3, 0.9, speaker=speaker)
                      for i, w in enumerate(text.split()))
        return ClientResult("file-x", 1, 1, ResultKind.FINAL, text, start=start, end=start + 2.0, words=words,
                            speaker=speaker, channel=channel)

    cues = [channel_cue(final(0, 0.0, "hello there")), channel_cue(final(1, 1.0, "good morning", "S2")),
            channel_cue(final(0, 3.5, "how are you"))]
    body, _ = render(cues, "verbose_json")
    assert isinstance(body, dict)
    assert [(s["channel"], s["speaker"]) for s in body["segments"]] == [(0, "ch0"), (1, "ch1 S2"), (0, "ch0")]
    assert all(w["channel"] == s["channel"] for s in body["segments"] for w in s["words"])
    assert body["channels"] == [{"channel": 0, "text": "hello there how are you"},
                                {"channel": 1, "text": "good morning"}]
    assert render(cues, "json")[0] == {"text": "hello there good morning how are you", "channels": body["channels"]}
    srt, _ = render(cues, "srt")
    assert isinstance(srt, str) and "ch0: hello there" in srt and "ch1 S2: good morning" in srt
    vtt, _ = render(cues, "vtt")
    assert isinstance(vtt, str) and "<v ch1 S2>good morning</v>" in vtt
    mono, _ = render([Cue.of(final(0, 0.0, "hello there"))], "verbose_json")
    assert isinstance(mono, dict) and "channels" not in mono and "channel" not in mono["segments"][0]


def test_webvtt_escapes_markup_and_wraps_long_cues() -> None:
    """What a subtitle parser (webvtt-py) reads back is the text as said; no cue has more than two lines of 42
    characters; a long cue is split at its words' times, a translation's in proportion to its length."""
    import html
    import io

    import webvtt

    from edge.http.formats import Cue, lines, srt, vtt

    said = "Tom <b>& Jerry</b> said 3 > 2 --> true"
    long = ("and so my fellow Americans ask not what your country can do for you ask what you can do for your "
            "country my fellow citizens of the world ask not what America will do for you")
    words = [{"word": w, "start": 2 + i * 0.4, "end": 2 + i * 0.4 + 0.3} for i, w in enumerate(long.split())]
    cues = [Cue(0.0, 2.0, said), Cue(2.0, 2.0 + 0.4 * len(words), long, words, {"pt": long.upper()})]
    parsed = webvtt.from_buffer(io.StringIO(vtt(cues)))
    assert html.unescape(parsed[0].text) == said and "<b>" not in parsed[0].text
    assert " ".join(c.text.replace("\n", " ") for c in parsed[1:]) == long
    shown = [html.unescape(c.text).split("\n") for c in parsed]
    assert all(len(rows) <= 2 and all(len(x) <= 42 for x in rows) for rows in shown), shown
    parts = -(-len(lines(long)) // 2)
    assert parts >= 2 and len(parsed) == 1 + parts
    # Split where a word ends: the second cue begins as the first one's last word is over.
    def sec(t: str) -> float:  # webvtt-py's *_in_seconds are whole seconds
        h, m, rest = t.split(":")
        return int(h) * 3600 + int(m) * 60 + float(rest)

    n = len(parsed[1].text.split())
    assert sec(parsed[1].end) == pytest.approx(words[n - 1]["end"], abs=0.002)
    assert parsed[2].start == parsed[1].end and sec(parsed[-1].end) == pytest.approx(cues[1].end, abs=0.002)
    starts = [sec(c.start) for c in webvtt.from_buffer(io.StringIO(vtt(cues, translation="pt")))]
    assert starts == sorted(starts) and len(starts) == 1 + parts
    assert srt(cues).count(" --> ") == 1 + parts  # SRT gets the same cues


def test_channel_config_and_names() -> None:
    import json

    import pytest

    from actors.runtime import channels

    got = channels.load(env_json=json.dumps({"channels": [{"name": "news", "url": "http://x/a.mp3",
                                                           "targets": ["de"]}]}))
    assert got[0].name == "news" and got[0].language == "auto" and got[0].targets == ("de",)
    assert channels.stream_id("news") == "ch=news" and channels.channel_of("ch=news") == "news"
    assert channels.new_session_id("news").startswith("ch=news=")
    for bad in ([{"name": "News!", "url": "u"}], [{"name": "a", "url": ""}], [{"name": "a", "url": "u"}] * 2,
                [{"url": "u"}]):
        with pytest.raises(channels.ChannelConfigError):
            channels.parse(bad)



def test_prompt_context_is_bounded_and_per_language() -> None:
    ctx = PromptContext(max_chars=20, max_sessions=2)
    ctx.add("a", "en", "Good morning.")
    ctx.add("a", "en", "This Tuesday is election day.")
    assert ctx.prompt("a", "en") == "esday is election day."[-20:] and len(ctx.prompt("a", "en")) <= 20
    assert ctx.prompt("a", "de") == ""  # another language's text would pull Whisper off
    ctx.add("a", "de", "Guten Morgen.")
    assert ctx.prompt("a", "de") == "Guten Morgen." and ctx.prompt("a", "en") == ""
    ctx.add("b", "en", "x")
    ctx.add("c", "en", "y")
    assert ctx.prompt("a", "de") == ""  # least recently used session forgotten
    ctx.add("c", "en", "   ")
    assert ctx.prompt("c", "en") == "y"


def _segment(utterance: int, samples: int, speculative: bool) -> Segment:
    return Segment(session_id="s", utterance_id=utterance, seq=1, final_index=1, kind=SegmentKind.FINAL,
                   audio=b"\0\0" * samples, start=0.0, end=1.0, language="en", speech_end_wall=0.0, partition=0,
                   speculative=speculative)


def test_early_decodes_match_only_the_same_samples() -> None:
    early: EarlyDecodes[str] = EarlyDecodes(capacity=2)
    early.put(early_key(_segment(1, 16000, True), "en"), "text")
    assert early.take(early_key(_segment(1, 16001, False), "en")) is None  # speech went on: other samples
    assert early.take(early_key(_segment(1, 16000, False), "de")) is None
    assert early.take(early_key(_segment(1, 16000, False), "en")) == "text"
    assert early.take(early_key(_segment(1, 16000, False), "en")) is None  # used once
    for n in range(3):
        early.put(early_key(_segment(2, n + 1, True), "en"), str(n))
    assert early_key(_segment(2, 1, False), "en") not in early  # bounded: the oldest went
    early.drop_utterance("s", 2)
    assert early_key(_segment(2, 3, False), "en") not in early
    assert (early.made, early.hits) == (4, 1)


def test_every_setting_is_documented() -> None:
    """Every `TOLK_*` variable a settings class reads is in docs/configuration.md's table."""
    import dataclasses
    import re
    from pathlib import Path

    from actors.exporter.actor import ExporterSettings
    from actors.fanout.actor import FanoutSettings
    from actors.ingest.actor import IngestSettings
    from actors.runtime.actor import RuntimeSettings
    from actors.runtime.bus import NatsAuth
    from actors.segmenter.actor import SegmenterSettings
    from actors.stt.actor import SttSettings
    from actors.translator.actor import TranslatorSettings
    from edge.settings import EdgeSettings

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    table = set(re.findall(r"^\|[^|\n]*`(TOLK_[A-Z0-9_]+)`", doc, re.M)) | {
        m for row in re.findall(r"^\|([^|\n]*)\|", doc, re.M) for m in re.findall(r"`(TOLK_[A-Z0-9_]+)`", row)}
    classes = (NatsAuth, RuntimeSettings, FanoutSettings, SegmenterSettings, IngestSettings, TranslatorSettings,
               ExporterSettings, SttSettings, EdgeSettings)
    missing = [f"{cls.__name__}: TOLK_{f.name.upper()}" for cls in classes for f in dataclasses.fields(cls)
               if f"TOLK_{f.name.upper()}" not in table]
    assert not missing, missing


def test_backoff_is_capped_and_jittered() -> None:
    from actors.runtime.backoff import delay, spread

    for attempt, step in [(0, 0.5), (1, 1.0), (3, 4.0), (10, 5.0), (500, 5.0)]:
        assert delay(attempt, 0.5, 5.0, rand=lambda: 0.0) == step / 2
        assert delay(attempt, 0.5, 5.0, rand=lambda: 1.0) == step
    draws = {round(delay(4, 0.5, 30.0), 6) for _ in range(200)}
    assert len(draws) > 150 and min(draws) >= 4.0 and max(draws) <= 8.0  # a crowd spreads over half the step
    assert 0.5 <= spread(0.5) <= 0.75
