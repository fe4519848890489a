"""OpenAI's audio API at the edge, driven by the unmodified `openai` SDK pointed at a real `tolk up` by base URL."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator

import aiohttp
import openai
import pytest
from sacrebleu.metrics import CHRF

from loadtest.speech import Clip, clips, speech_dir
from loadtest.wer import corpus_wer
from tests.conftest import Running, start_tolk, stop_tolk

pytestmark = [pytest.mark.asyncio(loop_scope="session")]
e2e = pytest.mark.e2e

ENGLISH = ("en_jfk_inaugural_1961", "en_fleurs_003_id1728", "en_librispeech_61-70968-0000")


@pytest.fixture(scope="module")
def tolk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """English on tiny.en, everything else (the Portuguese to translate) on the multilingual base model."""
    run = start_tolk(tmp_path_factory.mktemp("tolk-openai"),
                     env={"TOLK_STT_POOLS": "en=tiny.en:en;multi=base:*", "TOLK_MT_DOWNLOAD": "0"})
    yield run
    stop_tolk(run)


def english() -> list[Clip]:
    return [c for c in clips("en") if c.name.startswith(ENGLISH)]


def client(tolk: Running) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{tolk.http}/v1", api_key="unused-here", max_retries=0, timeout=300)


def upload(c: Clip) -> tuple[str, bytes]:
    return (c.path.name, c.path.read_bytes())


@e2e
async def test_transcriptions_formats_and_wer(tolk: Running) -> None:
    api = client(tolk)
    cs = english()
    results = await asyncio.gather(*(
        api.audio.transcriptions.create(model="whisper-1", file=upload(c), language="en",
                                        response_format="verbose_json", timestamp_granularities=["word", "segment"],
                                        temperature=0.0, prompt="Inaugural address, 1961.")
        for c in cs))
    wer = corpus_wer([(c.reference, r.text) for c, r in zip(cs, results, strict=True)])
    print(f"\nOpenAI SDK verbose_json over {len(cs)} clips: WER {wer:.3f}")
    assert wer <= 0.15
    for c, r in zip(cs, results, strict=True):
        assert r.language == "english" and 0 < r.duration <= c.seconds + 0.5
        assert r.segments and r.words, "both granularities were asked for"
        assert all(s.start < s.end for s in r.segments)
        starts = [w.start for w in r.words]
        assert starts == sorted(starts) and all(w.word for w in r.words)
    jfk = next(c for c in cs if c.name.startswith("en_jfk"))
    plain = await api.audio.transcriptions.create(model="gpt-4o-transcribe", file=upload(jfk))  # json, auto
    assert corpus_wer([(jfk.reference, plain.text)]) <= 0.15
    srt = await api.audio.transcriptions.create(model="whisper-1", file=upload(jfk), response_format="srt")
    assert isinstance(srt, str) and srt.startswith("1\n00:00:0") and " --> " in srt
    vtt = await api.audio.transcriptions.create(model="whisper-1", file=upload(jfk), response_format="vtt")
    assert isinstance(vtt, str) and vtt.startswith("WEBVTT")
    text = await api.audio.transcriptions.create(model="whisper-1", file=upload(jfk), response_format="text")
    assert isinstance(text, str) and corpus_wer([(jfk.reference, text)]) <= 0.15


@e2e
async def test_stream_yields_deltas_then_done(tolk: Running) -> None:
    api = client(tolk)
    c = next(c for c in clips("en") if c.name.startswith("en_librispeech_2412"))
    stream = await api.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=upload(c), language="en",
                                                   stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    print(f"\nstream events: {kinds}")
    assert kinds[-1] == "transcript.text.done" and kinds.count("transcript.text.done") == 1
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert deltas, "at least one delta before done"
    assert "".join(deltas) == events[-1].text
    assert corpus_wer([(c.reference, events[-1].text)]) <= 0.15


@e2e
async def test_translations_portuguese_into_english(tolk: Running) -> None:
    with open(speech_dir() / "translations.tsv", newline="", encoding="utf-8") as fh:
        refs = {r["file"]: r["reference_translation"] for r in csv.DictReader(fh, delimiter="\t")
                if r["src_lang"] == "pt" and r["tgt_lang"] == "en"}
    cs = [c for c in clips("pt") if c.name in refs][:2]
    assert cs
    api = client(tolk)
    # OpenAI's translations take no `language`; Tolk reads one as the source hint (extra_body: the SDK's own way
    # to send a field it does not declare), since the small multilingual model's detection is not reliable.
    results = await asyncio.gather(*(api.audio.translations.create(
        model="whisper-1", file=upload(c), response_format="verbose_json", extra_body={"language": "pt"})
        for c in cs))
    hyps = [r.text for r in results]
    score = float(CHRF().corpus_score(hyps, [[refs[c.name] for c in cs]]).score)
    print(f"\npt→en translations: chrF {score:.1f}: {[(r.language, r.text) for r in results]}")
    assert all(r.language == "portuguese" for r in results)
    assert score >= 35.0


@e2e
async def test_errors_in_openai_shape(tolk: Running) -> None:
    api = client(tolk)
    jfk = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    cases = [
        (dict(model="", file=upload(jfk)), 400, "model"),
        (dict(model="whisper-1", file=upload(jfk), response_format="yaml"), 400, "response_format"),
        (dict(model="whisper-1", file=upload(jfk), language="klingon"), 400, "language"),
        (dict(model="whisper-1", file=upload(jfk), temperature=3.0), 400, "temperature"),
        (dict(model="whisper-1", file=("notes.txt", b"this is not audio at all" * 10)), 400, "file"),
        (dict(model="whisper-1", file=("empty.wav", b"")), 400, "file"),
    ]
    for kwargs, status, param in cases:
        with pytest.raises(openai.APIStatusError) as err:
            await api.audio.transcriptions.create(**kwargs)  # type: ignore[call-overload]
        body = err.value.body
        assert err.value.status_code == status, body
        assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}, body
        assert body["param"] == param and body["type"] == "invalid_request_error", body
    async with aiohttp.ClientSession() as http:  # no file at all; then not even multipart
        form = aiohttp.FormData()
        form.add_field("model", "whisper-1")
        for data in (form, b"{}"):
            async with http.post(f"{tolk.http}/v1/audio/transcriptions", data=data) as resp:
                body = await resp.json()
                assert resp.status == 400 and body["error"]["param"] == "file", body
    # the server still serves after all that
    ok = await api.audio.transcriptions.create(model="whisper-1", file=upload(jfk), language="en")
    assert corpus_wer([(jfk.reference, ok.text)]) <= 0.15

