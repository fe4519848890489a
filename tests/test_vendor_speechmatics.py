"""Speechmatics' own realtime SDK (`speechmatics-python`, unmodified) against a real `tolk up` at `/v2`, by URL
and API key only: real models, real speech, translation into Portuguese; and its error shapes on bad input."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest

from edge.transports.speechmatics.realtime import DECODE_S, max_utterance_for
from loadtest.speech import Clip, clips, encode_audio
from loadtest.speechmatics_client import SmRun, stream_sdk
from loadtest.wer import corpus_wer
from tests.conftest import Running, start_tolk, stop_tolk

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]

KEY = "sm-test-key"
WER_BOUND = 0.15
CUT_WER_BOUND = 0.25  # speech cut every 2 s (max_delay): Whisper gets less context


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    run = start_tolk(tmp_path_factory.mktemp("tolk-sm"), env={"TOLK_API_TOKENS": KEY, "TOLK_MT_DOWNLOAD": "0"})
    yield run
    stop_tolk(run)


def sm_url(stack: Running) -> str:
    return stack.ws.replace("/v1/listen", "/v2")


def jfk() -> Clip:
    return next(c for c in clips("en") if c.name.startswith("en_jfk"))


def check_transcript_shape(m: dict[str, Any]) -> None:
    meta = m["metadata"]
    assert meta["start_time"] <= meta["end_time"]
    assert m["results"], m
    words = [r for r in m["results"] if r["type"] == "word"]
    assert words and all(r["type"] in ("word", "punctuation") for r in m["results"])
    for r in m["results"]:
        alt = r["alternatives"][0]
        assert alt["content"] and 0.0 <= alt["confidence"] <= 1.0
        assert r["start_time"] <= r["end_time"]
    starts = [r["start_time"] for r in words]
    assert starts == sorted(starts)
    # The words and punctuation spell the transcript.
    spelled = "".join(r["alternatives"][0]["content"] for r in m["results"])
    assert re.sub(r"\W", "", spelled) == re.sub(r"\W", "", meta["transcript"]), (spelled, meta["transcript"])


async def test_sdk_streams_english_with_partials_and_portuguese_translations(stack: Running) -> None:
    clip = jfk()
    pcm, rate = clip.pcm16()
    run = await stream_sdk(sm_url(stack), pcm, bytes_per_s=rate * 2, pace=1.0, sample_rate=rate,
                           chunk_size=rate // 5, targets=["pt"], token=KEY)
    assert not run.error, run.error
    kinds = run.kinds()
    assert kinds[0] == "RecognitionStarted" and kinds[-1] == "EndOfTranscript", kinds
    assert run.of("RecognitionStarted")[0]["id"]
    added = [m["seq_no"] for m in run.of("AudioAdded")]
    assert added == list(range(1, len(added) + 1)) and added, "every AddAudio is acknowledged in order"
    assert not run.of("Error") and not run.of("Warning"), run.of("Error") + run.of("Warning")
    wer = corpus_wer([(clip.reference, run.text())])
    assert wer <= WER_BOUND, (wer, run.text())
    # Partials come before the finals they lead to: one at least before the first final, and more than finals.
    assert "AddPartialTranscript" in kinds[:kinds.index("AddTranscript")]
    assert len(run.of("AddPartialTranscript")) >= len(run.finals())
    for m in run.finals():
        check_transcript_shape(m)
    # Every final with text is followed by its Portuguese translation, before the next final.
    finals_seen = 0
    pending: dict[str, Any] | None = None
    for _, m in run.messages:
        if m["message"] == "AddTranscript":
            assert pending is None, f"no AddTranslation for {pending}"
            if m["metadata"]["transcript"]:
                pending, finals_seen = m, finals_seen + 1
        elif m["message"] == "AddTranslation":
            assert m["language"] == "pt"
            assert pending is not None, "an AddTranslation without its final"
            assert m["results"] and m["results"][0]["content"].strip()
            assert m["results"][0]["start_time"] == pending["metadata"]["start_time"]
            pending = None
    assert pending is None and finals_seen >= 2
    # No partial translations unless asked for.
    assert not run.of("AddPartialTranslation")


async def test_partial_translations_when_enabled_and_partials_off(stack: Running) -> None:
    clip = jfk()
    pcm, rate = clip.pcm16()
    run = await stream_sdk(sm_url(stack), pcm, bytes_per_s=rate * 2, pace=1.5, sample_rate=rate,
                           enable_partials=False, targets=["pt"], translate_partials=True, token=KEY)
    assert not run.error, run.error
    assert not run.of("AddPartialTranscript"), "enable_partials false: no partial transcripts"
    assert run.of("AddPartialTranslation"), "translation_config.enable_partials: partial translations"
    assert all(m["language"] == "pt" for m in run.of("AddPartialTranslation"))
    assert len(run.of("AddTranslation")) == len(run.finals())
    assert corpus_wer([(clip.reference, run.text())]) <= WER_BOUND


@pytest.mark.parametrize("container", ["wav", "ogg", "webm"])
async def test_file_audio_type(stack: Running, container: str) -> None:
    """`AudioSettings()` without an encoding sends `{"type": "file"}` and the file's bytes as they are: WAV (the
    SDK's usual input), or Opus in Ogg / WebM, decoded at the edge as they arrive."""
    clip = jfk()
    if container == "wav":
        data = clip.path.read_bytes()
    else:
        pcm, rate = clip.pcm16()
        data = encode_audio(np.frombuffer(pcm, "<i2"), rate, container, "libopus", bitrate=24000)
    run = await stream_sdk(sm_url(stack), data, bytes_per_s=len(data) / clip.seconds, pace=4.0, encoding=None,
                           chunk_size=4096, enable_partials=False, token=KEY)
    assert not run.error, run.error
    assert run.kinds()[-1] == "EndOfTranscript"
    assert corpus_wer([(clip.reference, run.text())]) <= WER_BOUND, run.text()


async def test_api_key_is_a_tolk_token(stack: Running) -> None:
    pcm, rate = jfk().pcm16()
    run = await stream_sdk(sm_url(stack), pcm[: rate], sample_rate=rate, token="wrong-key", timeout=30)
    assert "401" in run.error, run.error
    run = await stream_sdk(sm_url(stack), pcm[: rate], sample_rate=rate, token=None, timeout=30)
    assert "401" in run.error, run.error


async def exchange(stack: Running, frames: list[str | bytes], path: str = "/v2/en") -> tuple[list[dict[str, Any]],
                                                                                           int | None]:
    """Raw frames to the adapter; the messages it answers and its close code."""
    url = stack.http.replace("http", "ws") + path
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url, headers={"Authorization": f"Bearer {KEY}"}) as ws:
        for f in frames:
            if isinstance(f, bytes):
                await ws.send_bytes(f)
            else:
                await ws.send_str(f)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                out.append(json.loads(msg.data))
        return out, ws.close_code


START = {"message": "StartRecognition", "audio_format": {"type": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
         "transcription_config": {"language": "en"}}


def start(**changes: Any) -> str:
    msg = json.loads(json.dumps(START))
    for key, value in changes.items():
        if value is None:
            msg.pop(key, None)
        else:
            msg[key] = value
    return json.dumps(msg)


@pytest.mark.parametrize(("frames", "sm_type", "close"), [
    ([json.dumps({"message": "Hello"})], "invalid_message", 1003),
    (["not json"], "invalid_message", 1003),
    ([json.dumps(["StartRecognition"])], "invalid_message", 1003),
    ([b"\x00\x01" * 800], "protocol_error", 4007),
    ([json.dumps({"message": "EndOfStream", "last_seq_no": 0})], "protocol_error", 4007),
    ([start(audio_format=None)], "invalid_message", 1003),
    ([start(transcription_config=None)], "invalid_message", 1003),
    ([start(audio_format={"type": "raw", "encoding": "pcm_s24le", "sample_rate": 16000})], "invalid_audio_type", 1003),
    ([start(audio_format={"type": "raw", "encoding": "pcm_s16le"})], "invalid_message", 1003),
    ([start(audio_format={"type": "raw", "encoding": "pcm_s16le", "sample_rate": 96000})], "invalid_audio_type", 1003),
    ([start(audio_format={"type": "stream"})], "invalid_audio_type", 1003),
    ([start(transcription_config={"language": "xx"})], "invalid_model", 1003),
    ([start(transcription_config={"language": "en", "max_delay": 20})], "invalid_config", 1003),
    ([start(transcription_config={"language": "en", "enable_partials": "yes"})], "invalid_config", 1003),
    ([start(translation_config={"target_languages": "not a list!"})], "invalid_config", 1003),
    ([start(), start()], "protocol_error", 4007),
    ([start(), b"\x00\x01\x02"], "data_error", 4005),  # pcm_s16le is 2 bytes a sample
    ([start(), json.dumps({"message": "AddChannelAudio", "channel": "a", "data": ""})], "invalid_message", 1003),
    ([start(), json.dumps({"message": "EndOfStream"})], "invalid_message", 1003),
    ([start(audio_format={"type": "file"}), b"ID3\x04" + bytes(2000)], "invalid_audio_type", 1003),
    ([start(audio_format={"type": "file"}), b"OggS" + bytes(4000)], "data_error", 4005),
])
async def test_bad_input_gets_speechmatics_errors(stack: Running, frames: list[str | bytes], sm_type: str,
                                                  close: int) -> None:
    messages, code = await exchange(stack, frames)
    errors = [m for m in messages if m["message"] == "Error"]
    assert len(errors) == 1, messages
    assert errors[0]["type"] == sm_type and errors[0]["reason"], errors
    assert set(errors[0]) == {"message", "type", "reason"}
    assert messages[-1] is errors[0], "nothing after the Error"
    assert code == close
    # The edge is alive (a full session after all of these: test_language_from_the_path_…, next).
    async with aiohttp.ClientSession() as http, http.get(f"{stack.http}/healthz") as resp:
        assert resp.status == 200


async def test_language_from_the_path_and_empty_targets_warning(stack: Running) -> None:
    """The SDK puts the language in both the path and the config; a client with only the path works too."""
    pcm, rate = jfk().pcm16()
    msg = json.loads(start(translation_config={"target_languages": []}))
    del msg["transcription_config"]["language"]
    messages, code = await exchange(stack, [json.dumps(msg), pcm[: rate * 3],
                                            json.dumps({"message": "EndOfStream", "last_seq_no": 1})])
    kinds = [m["message"] for m in messages]
    assert kinds[0] == "RecognitionStarted" and kinds[-1] == "EndOfTranscript", kinds
    assert {"message": "AudioAdded", "seq_no": 1} in messages
    warning = next(m for m in messages if m["message"] == "Warning")
    assert warning["type"] == "empty_translation_target_list"
    assert code == 1000
    text = " ".join(m["metadata"]["transcript"] for m in messages if m["message"] == "AddTranscript")
    assert "and so my" in text.lower(), text  # the clip's first words (3 s of it, sent at once)


async def test_unsupported_translation_pair_is_a_warning(stack: Running) -> None:
    pcm, rate = jfk().pcm16()
    run = await stream_sdk(sm_url(stack), pcm[: rate * 4], sample_rate=rate, targets=["pt", "qq"], token=KEY,
                           enable_partials=False)
    assert not run.error, run.error
    warnings = run.of("Warning")
    assert [w["type"] for w in warnings] == ["unsupported_translation_pair"], warnings
    assert "qq" in warnings[0]["reason"]
    assert {m["language"] for m in run.of("AddTranslation")} == {"pt"}
    assert isinstance(run, SmRun) and run.finals()


def mulaw(samples: np.ndarray) -> bytes:
    """G.711 µ-law of int16 samples (what a telephony stack sends)."""
    x = samples.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


async def test_mulaw_telephony_audio(stack: Running) -> None:
    """`pcm_s16le`'s telephone cousin: µ-law at 8 kHz, expanded at the edge."""
    import soxr

    clip = jfk()
    pcm, rate = clip.pcm16()
    narrow = soxr.resample(np.frombuffer(pcm, "<i2"), rate, 8000).astype(np.int16)
    run = await stream_sdk(sm_url(stack), mulaw(narrow), bytes_per_s=8000, pace=2.0, encoding="mulaw",
                           sample_rate=8000, chunk_size=800, enable_partials=False, token=KEY)
    assert not run.error, run.error
    assert corpus_wer([(clip.reference, run.text())]) <= WER_BOUND, run.text()


async def test_force_end_of_utterance(stack: Running) -> None:
    """#35: ForceEndOfUtterance mid-speech ends the open utterance at once: its AddTranscript, then
    EndOfUtterance, then the speech after it as another utterance."""
    pcm, rate = next(c for c in clips("en") if c.name.startswith("en_gb0")).pcm16()  # read without long pauses
    cut = rate * 2 * 5
    force = json.dumps({"message": "ForceEndOfUtterance"})
    messages, code = await exchange(stack, [start(), pcm[:cut], force, pcm[cut: cut + rate * 2 * 4],
                                            json.dumps({"message": "EndOfStream", "last_seq_no": 2})])
    kinds = [m["message"] for m in messages]
    assert code == 1000 and kinds[-1] == "EndOfTranscript", kinds
    assert kinds.count("EndOfUtterance") == 1, kinds
    eou = kinds.index("EndOfUtterance")
    before = [m["metadata"] for m in messages[:eou] if m["message"] == "AddTranscript"]
    after = [m["metadata"] for m in messages[eou:] if m["message"] == "AddTranscript"]
    assert before and after, kinds
    assert before[-1]["transcript"] and before[-1]["end_time"] <= 5.0 + 1e-3, before  # mid-speech: words
    assert messages[eou]["metadata"] == {"start_time": before[-1]["start_time"], "end_time": before[-1]["end_time"]}
    assert all(m["start_time"] >= 5.0 - 0.03 for m in after), after  # within the 30 ms VAD frame the flush is in


async def test_additional_vocab(stack: Running) -> None:
    """#35: `additional_vocab` contents are the session's vocabulary; over the bounds: `invalid_config`."""
    c = next(c for c in clips("en") if c.name == "en_conversational_multilingual_ipa.wav")
    pcm, _ = c.pcm16()
    config = {"language": "en", "additional_vocab": [{"content": "Sloth", "sounds_like": ["slaw"]}, "Kubernetes"]}
    messages, code = await exchange(stack, [start(transcription_config=config), pcm,
                                            json.dumps({"message": "EndOfStream", "last_seq_no": 1})])
    text = " ".join(m["metadata"]["transcript"] for m in messages if m["message"] == "AddTranscript")
    assert code == 1000 and "Sloth" in text, (text, messages[-3:])
    too_many = {"language": "en", "additional_vocab": [f"t{i}" for i in range(101)]}
    messages, code = await exchange(stack, [start(transcription_config=too_many)])
    assert messages[-1]["message"] == "Error" and messages[-1]["type"] == "invalid_config", messages
    assert code == 1003


async def test_end_of_utterance_silence_trigger(stack: Running) -> None:
    """#35: `conversation_config.end_of_utterance_silence_trigger` is the session's endpoint: each utterance its
    pause ended has its AddTranscript then EndOfUtterance; a shorter trigger ends more of them; without it no
    EndOfUtterance; outside 0.1-2 s: invalid_config."""
    pcm, _ = jfk().pcm16()
    eos = json.dumps({"message": "EndOfStream", "last_seq_no": 1})

    async def run(conversation: dict[str, Any] | None) -> list[dict[str, Any]]:
        config: dict[str, Any] = {"language": "en"}
        if conversation is not None:
            config["conversation_config"] = conversation
        messages, code = await exchange(stack, [start(transcription_config=config), pcm, eos])
        assert code == 1000 and messages[-1]["message"] == "EndOfTranscript", messages[-3:]
        return messages

    quick, slow, plain = await asyncio.gather(run({"end_of_utterance_silence_trigger": 0.3}),
                                              run({"end_of_utterance_silence_trigger": 1.5}), run(None))
    kinds = [m["message"] for m in quick]
    eous = [i for i, k in enumerate(kinds) if k == "EndOfUtterance"]
    assert len(eous) >= 2, kinds
    for i in eous:  # right after its final, with that final's span
        assert kinds[i - 1] == "AddTranscript", kinds
        assert quick[i]["metadata"]["end_time"] == quick[i - 1]["metadata"]["end_time"]
    finals = [[m for m in ms if m["message"] == "AddTranscript"] for ms in (quick, slow)]
    assert len(finals[0]) > len(finals[1]), [len(f) for f in finals]
    assert "EndOfUtterance" not in [m["message"] for m in plain]
    for bad in (3.0, 0.05, "0.5"):
        config = {"language": "en", "conversation_config": {"end_of_utterance_silence_trigger": bad}}
        messages, code = await exchange(stack, [start(transcription_config=config)])
        assert messages[-1]["message"] == "Error" and messages[-1]["type"] == "invalid_config", messages
        assert code == 1003


async def test_max_delay_cuts_finals_on_continuous_speech(stack: Running) -> None:
    """#35: `max_delay` is the session's longest utterance (max_delay less a final's decode, at least Tolk's 2 s
    floor): on read speech through the SDK no final covers more than about 2 s with max_delay 2.0, and without it
    (Tolk's 15 s cap) finals run on to the pauses; nearly the same words either way; bad max_delay: invalid_config."""
    assert max_utterance_for(None) == 0.0 and max_utterance_for(0.7) == max_utterance_for(2.0) == 2.0
    assert max_utterance_for(4.0) == 4.0 - DECODE_S
    clip = next(c for c in clips("en") if c.name.startswith("en_librispeech_2412"))  # 11.7 s read, few pauses
    pcm, rate = clip.pcm16()
    later = json.dumps({"message": "SetRecognitionConfig", "transcription_config": {"max_delay": 2.0}})
    capped, plain, (configured, code) = await asyncio.gather(*(
        stream_sdk(sm_url(stack), pcm, bytes_per_s=rate * 2, pace=2.0, sample_rate=rate, enable_partials=False,
                   max_delay=delay, token=KEY) for delay in (2.0, None)),
        exchange(stack, [start(), later, pcm, json.dumps({"message": "EndOfStream", "last_seq_no": 1})]))
    assert code == 1000
    spans = []
    for finals, bound in ((capped.finals(), CUT_WER_BOUND), (plain.finals(), WER_BOUND),
                          ([m for m in configured if m["message"] == "AddTranscript"], CUT_WER_BOUND)):
        spans.append([m["metadata"]["end_time"] - m["metadata"]["start_time"] for m in finals])
        text = " ".join(m["metadata"]["transcript"] for m in finals)
        assert corpus_wer([(clip.reference, text)]) <= bound, text  # nothing lost or doubled at the cuts
    assert not capped.error and not plain.error, (capped.error, plain.error)
    # The words' span: within the 2 s utterance (SetRecognitionConfig: from the next utterance, here the first).
    assert max(spans[0]) <= 2.0 + 0.05 and max(spans[2]) <= 2.0 + 0.05, spans
    assert max(spans[1]) > 3.0 and len(spans[0]) > len(spans[1]), spans
    for bad in (0.5, 4.5, "2"):
        messages, code = await exchange(stack, [start(transcription_config={"language": "en", "max_delay": bad})])
        assert messages[-1]["message"] == "Error" and messages[-1]["type"] == "invalid_config", messages
        assert code == 1003
