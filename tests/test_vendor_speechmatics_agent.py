"""Speechmatics' voice-agent endpoint (`/v2/agent`) against a real `tolk up`: LiveKit Agents' Speechmatics STT
plugin, unmodified (it speaks `speechmatics.agent_stt`), pointed at Tolk by base URL only, in both turn modes;
and the endpoint's own messages (segments, turns, sentences, speakers, errors) on the wire."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import numpy as np
import pytest

from loadtest.speech import Clip, clips
from loadtest.wer import corpus_wer
from tests.conftest import Running

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]

RATE = 16000
START = {"message": "StartRecognition", "audio_format": {"type": "raw", "encoding": "pcm_s16le", "sample_rate": RATE},
         "transcription_config": {"language": "en", "model": "linden-1", "enable_partials": True}}


def clip(prefix: str) -> Clip:
    return next(c for c in clips("en") if c.name.startswith(prefix))


def agent_url(tolk: Running) -> str:
    return tolk.ws.replace("/v1/listen", "/v2/agent")


def start(**changes: Any) -> str:
    msg: dict[str, Any] = json.loads(json.dumps(START))
    msg.update(changes)
    return json.dumps(msg)


async def exchange(tolk: Running, frames: list[str | bytes], pace_s: float = 0.0) -> tuple[list[dict[str, Any]],
                                                                                             int | None]:
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(agent_url(tolk)) as ws:
        for f in frames:
            if isinstance(f, bytes):
                for i in range(0, len(f), RATE // 5):  # 100 ms frames
                    await ws.send_bytes(f[i:i + RATE // 5])
                    await asyncio.sleep(pace_s)
            else:
                await ws.send_str(f)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                out.append(json.loads(msg.data))
        return out, ws.close_code


def eos(messages: int = 0) -> str:
    return json.dumps({"message": "EndOfStream", "last_seq_no": messages})


async def livekit_run(tolk: Running, pcm: bytes, rate: int, mode: str, finalize_at: float | None = None) -> list[Any]:
    """`pcm` through LiveKit's Speechmatics STT stream at 2x real time, then silence until its events settle."""
    from livekit import rtc
    from livekit.agents import stt, utils
    from livekit.plugins import speechmatics as lk_sm

    samples = np.frombuffer(pcm, "<i2")
    events: list[Any] = []
    async with utils.http_context.open():
        engine = lk_sm.STT(api_key="a-tolk-token", base_url=agent_url(tolk), language="en", include_partials=True,
                           turn_detection_mode=lk_sm.TurnDetectionMode(mode), vad=None)
        stream = engine.stream()

        async def read() -> None:
            async for ev in stream:
                events.append(ev)

        reader = asyncio.create_task(read())
        frame = rate // 50  # 20 ms, as a room track delivers them

        def push(x: np.ndarray) -> None:
            stream.push_frame(rtc.AudioFrame(data=x.tobytes(), sample_rate=rate, num_channels=1,
                                             samples_per_channel=len(x)))

        for i in range(0, len(samples), frame):
            push(samples[i:i + frame])
            if finalize_at is not None and i >= finalize_at * rate:
                engine.finalize()  # the application's own end of turn, mid-speech
                finalize_at = None
            await asyncio.sleep(0.01)
        if mode == "external":
            engine.finalize()
        deadline, since = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            done = events and events[-1].type in (stt.SpeechEventType.END_OF_SPEECH,
                                                   stt.SpeechEventType.RECOGNITION_USAGE)
            since = (since or time.monotonic()) if done else None
            if since and time.monotonic() - since > 2.0:
                break
            push(np.zeros(frame * 5, "<i2"))
            await asyncio.sleep(0.1)
        stream.end_input()
        await stream.aclose()
        reader.cancel()
        await engine.aclose()
    return events


async def test_livekit_speechmatics_plugin_with_the_services_turns(tolk: Running) -> None:
    """#35 point 2: LiveKit's Speechmatics STT in `vad` mode: interims, finals and the turn's start and end come
    from Tolk, and the finals are the speech."""
    from livekit.agents import stt

    c = clip("en_jfk")
    events = await livekit_run(tolk, *c.pcm16(), "vad")
    kinds = [e.type for e in events]
    finals = [e for e in events if e.type is stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert stt.SpeechEventType.INTERIM_TRANSCRIPT in kinds and finals, kinds
    assert kinds.index(stt.SpeechEventType.START_OF_SPEECH) < kinds.index(stt.SpeechEventType.FINAL_TRANSCRIPT)
    assert stt.SpeechEventType.END_OF_SPEECH in kinds, kinds
    text = " ".join(e.alternatives[0].text for e in finals)
    assert all(e.alternatives[0].speaker_id for e in finals)
    wer = corpus_wer([(c.reference, text)])
    print(f"\nLiveKit Speechmatics STT (vad) on Tolk: WER {wer:.3f}: {text!r}")
    assert wer <= 0.15


async def test_livekit_speechmatics_plugin_external_turns_end_on_finalize(tolk: Running) -> None:
    """In `external` mode the application ends the turn: `finalize()` mid-sentence gets the words so far as a final
    at once and the turn's end; Tolk's own pauses never end a turn."""
    from livekit.agents import stt

    pcm, rate = clip("en_gb0").pcm16()  # read without long pauses
    events = await livekit_run(tolk, pcm[:rate * 2 * 6], rate, "external", finalize_at=4.0)
    kinds = [e.type for e in events]
    finals = [e for e in events if e.type is stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert finals, kinds
    ends = [i for i, k in enumerate(kinds) if k is stt.SpeechEventType.END_OF_SPEECH]
    assert len(ends) == 2, kinds  # the finalize mid-speech, and the one after the audio
    first_turn = [e for e in events[:ends[0]] if e.type is stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert first_turn and first_turn[-1].alternatives[0].end_time <= 4.0 + 0.2 + 1e-3, first_turn


async def test_segments_turns_and_sentences_on_the_wire(tolk: Running) -> None:
    """What `agent_stt` reads: AddSegment's `segment` (`transcript`, `speaker`) with times in `metadata`;
    SpeechStarted/StartOfTurn before the turn's first segment, SpeechEnded/EndOfTurn after its last; with
    `emit_sentences` one segment per sentence; GetSpeakers answered; EndOfTranscript last."""
    pcm, _ = clip("en_jfk").pcm16()
    config = {**START["transcription_config"], "emit_sentences": True}  # type: ignore[dict-item]
    messages, code = await exchange(tolk, [start(transcription_config=config), pcm,
                                           json.dumps({"message": "GetSpeakers"}), eos()])
    kinds = [m["message"] for m in messages]
    assert code == 1000 and kinds[-1] == "EndOfTranscript", kinds
    assert kinds[0] == "RecognitionStarted" and "SpeakersResult" in kinds, kinds
    segments = [m for m in messages if m["message"] == "AddSegment"]
    assert segments and "AddPartialSegment" in kinds, kinds
    for m in segments:
        seg, meta = m["segment"], m["metadata"]
        assert seg["transcript"] and seg["speaker"] and meta["start_time"] <= meta["end_time"], m
    # emit_sentences: no segment holds two sentences
    assert all(seg["segment"]["transcript"].rstrip(".?!").count(". ") == 0 for seg in segments), segments
    assert kinds.index("SpeechStarted") < kinds.index("StartOfTurn") < kinds.index("AddSegment")
    assert kinds.count("StartOfTurn") == kinds.count("EndOfTurn") >= 1, kinds
    last_segment = max(i for i, k in enumerate(kinds) if k == "AddSegment")
    assert kinds.index("EndOfTurn", last_segment) < kinds.index("EndOfTranscript")
    text = " ".join(m["segment"]["transcript"] for m in segments)
    assert corpus_wer([(clip("en_jfk").reference, text)]) <= 0.15, text


@pytest.mark.parametrize(("frames", "sm_type", "close"), [
    ([start(turn_config={"turn_detection_mode": "smart"})], "invalid_config", 1003),
    ([start(turn_config="vad")], "invalid_config", 1003),
    ([start(transcription_config={"language": "en", "emit_sentences": "yes"})], "invalid_config", 1003),
    ([start(transcription_config={"language": "en", "model": 7})], "invalid_model", 1003),
    ([json.dumps({"message": "GetSpeakers"})], "protocol_error", 4007),
    (['{"message": "GetSpeaker\\u0073"}'], "protocol_error", 4007),  # read as JSON reads it: GetSpeakers
    ([json.dumps({"opts": {"message": "GetSpeakers"}, "message": "AddAudio"})], "invalid_message", 1003),  # not nested
    ([start(), json.dumps({"message": "ForceEndOfUtterance", "timestamp": "soon"})], "invalid_message", 1003),
    ([start(transcription_config={"language": "xx"})], "invalid_model", 1003),
])
async def test_bad_input_gets_speechmatics_errors(tolk: Running, frames: list[str | bytes], sm_type: str,
                                                  close: int) -> None:
    messages, code = await exchange(tolk, frames)
    errors = [m for m in messages if m["message"] == "Error"]
    assert len(errors) == 1 and errors[0]["type"] == sm_type and errors[0]["reason"], messages
    assert messages[-1] is errors[0] and code == close, (messages, code)
