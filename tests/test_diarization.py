"""Speaker labels (issue #34): the real GE2E encoder, online clustering, fan-out's merge, and a real `tolk up`."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import pytest
import webvtt

from actors.diarizer.actor import DiarizerSettings, SessionLabels
from actors.diarizer.clusters import SessionVoices, label_utterance
from actors.diarizer.ge2e import Ge2eEncoder
from actors.fanout.speakers import SpeakerGate
from actors.segmenter.segmenter import SegmenterConfig, UtteranceSegmenter
from actors.segmenter.vad import DualVad, SileroModel, Vote, WebRtcStream
from edge.core.commands import check_diarization
from edge.core.errors import ErrorCode, ProtocolError
from edge.transports.native.codec import parse_configure, parse_subscribe
from loadtest.client import SessionRun, stream_pcm
from loadtest.conversation import Conversation, build, score
from loadtest.faults import actor_process, stored_finals
from schemas import ClientResult, ResultKind, Segment, SegmentKind, SpeakerSpan, SpeakerTurns, Word
from tests.conftest import Running

THRESHOLD = 0.7  # DiarizerSettings().threshold at the default sensitivity


@pytest.fixture(scope="module")
def encoder() -> Ge2eEncoder:
    return Ge2eEncoder()


@pytest.fixture(scope="module")
def two_voices() -> Conversation:
    return build(2, (3.0, 6.0), 36.0, seed=3, gap_s=(0.6, 1.0))


def test_same_voice_is_closer_than_another(encoder: Ge2eEncoder, two_voices: Conversation) -> None:
    x = np.frombuffer(two_voices.pcm, "<i2").astype(np.float32) / 32768
    by: dict[str, list[np.ndarray]] = {}
    for t in two_voices.turns:
        by.setdefault(t.speaker, []).append(encoder.embed(x[int(t.start * 16000):int(t.end * 16000)]))
    a, b = by["R1"], by["R2"]
    same = np.mean([float(a[0] @ e) for e in a[1:]] + [float(b[0] @ e) for e in b[1:]])
    other = np.mean([float(e @ f) for e in a for f in b])
    assert same > other + 0.1, (same, other)


def test_online_clustering_finds_two_speakers_and_a_change_inside_an_utterance(
        encoder: Ge2eEncoder, two_voices: Conversation) -> None:
    x = np.frombuffer(two_voices.pcm, "<i2").astype(np.float32) / 32768
    voices = SessionVoices(max_speakers=8, threshold=THRESHOLD, merge_threshold=0.75)
    turns = list(two_voices.turns)
    # Two turns glued into one utterance (no pause between them): the change inside it must be found.
    glued = np.concatenate([x[int(turns[0].start * 16000):int(turns[0].end * 16000)],
                            x[int(turns[1].start * 16000):int(turns[1].end * 16000)]])
    spans = label_utterance(voices, encoder, glued, 1.5, 0.25, THRESHOLD, 1.0)
    voices.settle()
    assert len({voices.label(s.cluster)[0] for s in spans}) == 2, spans
    cut = turns[0].end - turns[0].start
    assert any(abs(s.start - cut) < 0.6 for s in spans[1:]), (spans, cut)
    for t in turns[2:]:
        label_utterance(voices, encoder, x[int(t.start * 16000):int(t.end * 16000)], 1.5, 0.25, THRESHOLD, 1.0)
        voices.settle()
    assert voices.speakers() == 2


def _final(utt: int, words: tuple[Word, ...]) -> ClientResult:
    return ClientResult(session_id="s", utterance_id=utt, seq=utt, kind=ResultKind.FINAL,
                        text=" ".join(w.word for w in words), words=words)


def test_a_final_waits_for_its_labels_and_a_late_one_is_corrected() -> None:
    gate = SpeakerGate(wait_s=1.0)
    words = (Word("hello", 0.0, 0.5, 0.9), Word("there", 2.1, 2.5, 0.9))
    turns = SpeakerTurns(session_id="s", utterance_id=1, final_index=1, partition=0,
                         spans=(SpeakerSpan(0.0, 2.0, "S1", 0.9), SpeakerSpan(2.0, 3.0, "S2", 0.8)))
    assert gate.labels(turns, 0.0) == []  # labels first, as usual: kept until the final comes
    out = gate.offer(_final(1, words), True, 0.1)
    assert [w.speaker for w in out[0].words] == ["S1", "S2"] and not out[0].speakers_late
    # No labels within the wait: held (and what follows behind it), then sent flagged, then corrected.
    assert gate.offer(_final(2, words), True, 1.0) == []
    end = ClientResult(session_id="s", utterance_id=2, seq=9, kind=ResultKind.END)
    assert gate.offer(end, True, 1.1) == []
    late = gate.release(2.1)
    assert [r.kind for r in late] == [ResultKind.FINAL, ResultKind.END] and late[0].speakers_late
    assert late[0].speaker == "" and all(w.speaker == "" for w in late[0].words)
    fix = gate.labels(SpeakerTurns(session_id="s", utterance_id=2, final_index=2, partition=0,
                                   spans=(SpeakerSpan(0.0, 3.0, "S2", 0.7),)), 2.5)
    assert [r.kind for r in fix] == [ResultKind.SPEAKERS] and fix[0].speaker == "S2"
    # A revision of labels already sent that changes them is a correction; one that changes nothing is not.
    again = SpeakerTurns(session_id="s", utterance_id=1, final_index=1, partition=0, revision=1,
                         spans=(SpeakerSpan(0.0, 3.0, "S1", 0.9),))
    fixed = gate.labels(again, 3.0)
    assert [w.speaker for w in fixed[0].words] == ["S1", "S1"] and fixed[0].kind is ResultKind.SPEAKERS
    assert gate.labels(again, 3.1) == []


@pytest.mark.parametrize("diarize,max_speakers", [("yes", None), (True, 0), (True, 33), (True, 2.5), (False, 2)])
def test_bad_diarization_settings_are_refused(diarize: Any, max_speakers: Any) -> None:
    with pytest.raises(ProtocolError) as err:
        check_diarization(diarize, max_speakers, ErrorCode.INVALID_DIARIZATION)
    assert err.value.code is ErrorCode.INVALID_DIARIZATION


def words_of(run: SessionRun) -> list[dict[str, Any]]:
    """The final words as a client holding corrections sees them (a SPEAKERS result replaces its final's words)."""
    by_utt: dict[int, list[dict[str, Any]]] = {}
    for r in run.results:
        if r["type"] in ("final", "speakers"):
            by_utt[r["utterance_id"]] = r["words"]
    return [w for utt in sorted(by_utt) for w in by_utt[utt]]


@pytest.mark.asyncio(loop_scope="session")
async def test_two_speakers_through_a_real_pipeline(tolk: Running, two_voices: Conversation) -> None:
    run = await stream_pcm(tolk.ws, two_voices.pcm, 16000, pace=2.0, timeout=180,
                           start_fields={"diarize": True, "max_speakers": 4})
    assert run.done and not run.errors, run.errors
    assert run.started["diarize"] is True and run.started["max_speakers"] == 4
    finals = [r for r in run.finals if r["text"]]
    assert len(finals) >= 4
    assert all(r["speaker"] in ("S1", "S2") or r.get("speakers_late") for r in finals), finals
    s = score(two_voices, words_of(run))
    assert s.hyp_speakers == 2 and s.accuracy >= 0.85, s
    assert finals[0]["speaker"] == "S1"  # numbered in order of appearance
    # The export of the finished session carries the same speakers (stored labels merged into stored finals).
    async with aiohttp.ClientSession() as http, http.get(
            f"{tolk.http}/v1/sessions/{run.session_id}/transcript?format=verbose_json") as resp:
        segments = (await resp.json())["segments"]
    exported = [w.get("speaker") for seg in segments for w in seg["words"]]
    live = [w["speaker"] for w in words_of(run)]
    assert len(exported) == len(live) and set(exported) == {"S1", "S2"}, segments
    assert sum(a == b for a, b in zip(exported, live, strict=True)) >= 0.95 * len(live), (exported, live)


def test_configure_and_subscribe_check_diarization() -> None:
    c = parse_configure({"type": "configure", "max_speakers": 3})
    assert c.diarize is None and c.max_speakers == 3  # checked against the session's diarize by the session
    assert parse_configure({"type": "configure", "diarize": False}).diarize is False
    for bad in ({"diarize": "on"}, {"max_speakers": 0}, {"diarize": False, "max_speakers": 2}):
        with pytest.raises(ProtocolError) as err:
            parse_configure({"type": "configure", **bad})
        assert err.value.code is ErrorCode.INVALID_CONFIGURE
    with pytest.raises(ProtocolError) as err:
        parse_subscribe({"type": "subscribe", "channel": "news", "diarize": True})
    assert err.value.code is ErrorCode.INVALID_DIARIZATION


@pytest.mark.asyncio(loop_scope="session")
async def test_bad_input_gets_the_protocols_error(tolk: Running) -> None:
    run = await stream_pcm(tolk.ws, b"\0" * 3200, 16000, start_fields={"diarize": True, "max_speakers": 40})
    assert run.errors and run.errors[0]["code"] == "invalid_diarization", run.errors
    async with aiohttp.ClientSession() as http, http.ws_connect(tolk.ws) as ws:  # a channel listener
        await ws.send_json({"type": "subscribe", "channel": "news", "diarize": True})
        got = await ws.receive_json(timeout=10)
    assert got["type"] == "error" and got["code"] == "invalid_diarization", got
    run = await stream_pcm(tolk.ws, b"\0" * 32000, 16000, configure=[(0.5, {"max_speakers": 2})])
    assert run.errors and run.errors[0]["code"] == "invalid_configure" and run.done, run.errors


@pytest.mark.asyncio(loop_scope="session")
async def test_no_final_is_lost_while_the_diarizer_is_down(tolk: Running, two_voices: Conversation) -> None:
    """SIGKILL the diarizer as a stream starts: every final still comes (unlabelled ones flagged, then corrected
    once `tolk up` has restarted it and it labels what it was sent)."""
    proc = actor_process(psutil.Process(tolk.proc.pid), "diarizer")
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    labelled = await stream_pcm(tolk.ws, two_voices.pcm, 16000, pace=2.0, timeout=180,
                                start_fields={"diarize": True})
    assert labelled.done and not labelled.errors, labelled.errors
    # Every final the pipeline stored for the session reached the client.
    stored = [seg["text"] for seg in stored_finals(tolk.http, labelled.session_id)]
    assert stored and [r["text"].strip() for r in labelled.finals if r["text"].strip()] == stored
    assert all(r.get("speaker") or r.get("speakers_late") for r in labelled.finals if r["text"])
    late = {r["utterance_id"] for r in labelled.finals if r.get("speakers_late")}
    corrected = {r["utterance_id"] for r in labelled.results if r["type"] == "speakers" and r["speaker"]}
    assert late <= corrected, (late, corrected)  # the restarted diarizer labelled what it had missed
    print(f"\n{len(late)} final(s) sent before their labels, all corrected")


async def _paced(send: Any, pcm: bytes, pace: float = 4.0) -> None:
    step = 3200  # 100 ms of 16 kHz int16
    for i in range(0, len(pcm), step):
        await send(pcm[i:i + step])
        await asyncio.sleep(0.1 / pace)


@pytest.mark.asyncio(loop_scope="session")
async def test_deepgram_and_speechmatics_shapes(tolk: Running, two_voices: Conversation) -> None:
    """Deepgram `diarize=true`: words[].speaker 0, 1 and speaker_confidence; Speechmatics `diarization: speaker`:
    each word's alternatives[].speaker S1, S2. Both streams at once, through the same pipeline."""
    base = tolk.ws.rsplit("/v1/listen", 1)[0]

    async def deepgram() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"{tolk.ws}?encoding=linear16&sample_rate=16000&diarize=true") as ws:
            reader = asyncio.create_task(_collect(ws))
            await _paced(ws.send_bytes, two_voices.pcm)
            await ws.send_str(json.dumps({"type": "CloseStream"}))
            got = await reader
        return [w for m in got if m.get("type") == "Results" and m["is_final"]
                for w in m["channel"]["alternatives"][0]["words"]]

    async def speechmatics() -> list[dict[str, Any]]:
        start = {"message": "StartRecognition",
                 "audio_format": {"type": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
                 "transcription_config": {"language": "en", "diarization": "speaker",
                                          "speaker_diarization_config": {"max_speakers": 3}}}
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/v2") as ws:
            await ws.send_str(json.dumps(start))
            reader = asyncio.create_task(_collect(ws, until="EndOfTranscript"))
            await _paced(ws.send_bytes, two_voices.pcm)
            await ws.send_str(json.dumps({"message": "EndOfStream", "last_seq_no": len(two_voices.pcm) // 3200 + 1}))
            got = await reader
        return [r for m in got if m.get("message") == "AddTranscript" for r in m["results"] if r["type"] == "word"]

    dg, sm = await asyncio.gather(deepgram(), speechmatics())
    assert dg and {w["speaker"] for w in dg} <= {0, 1} and all(0 <= w["speaker_confidence"] <= 1 for w in dg), dg
    s = score(two_voices, [{"start": w["start"], "end": w["end"], "speaker": f"S{w['speaker'] + 1}"} for w in dg])
    assert s.hyp_speakers == 2 and s.accuracy >= 0.8, s
    speakers = {r["alternatives"][0]["speaker"] for r in sm}
    assert speakers <= {"S1", "S2", "UU"} and {"S1", "S2"} <= speakers, speakers
    s = score(two_voices, [{"start": r["start_time"], "end": r["end_time"], "speaker": r["alternatives"][0]["speaker"]}
                           for r in sm if r["alternatives"][0]["speaker"] != "UU"])
    assert s.accuracy >= 0.8, s


async def _collect(ws: aiohttp.ClientWebSocketResponse, until: str = "") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            out.append(json.loads(msg.data))
            if until and out[-1].get("message") == until:
                break
    return out


@pytest.mark.asyncio(loop_scope="session")
async def test_vendor_bad_diarization_settings(tolk: Running) -> None:
    base = tolk.ws.rsplit("/v1/listen", 1)[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{tolk.http}/v1/listen?encoding=linear16&sample_rate=16000&diarize=maybe") as resp:
            body = await resp.json()
            assert resp.status == 400 and "diarize" in body["err_msg"], body
        for config in ({"diarization": "channel"}, {"diarization": "speaker",
                                                    "speaker_diarization_config": {"max_speakers": 50}}):
            async with http.ws_connect(f"{base}/v2") as ws:
                await ws.send_str(json.dumps({
                    "message": "StartRecognition",
                    "audio_format": {"type": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
                    "transcription_config": {"language": "en", **config}}))
                got = await _collect(ws)
            assert got[-1]["message"] == "Error" and got[-1]["type"] == "invalid_config", got
            assert ws.close_code == 1003


def _wav(pcm: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return out.getvalue()


@pytest.mark.asyncio(loop_scope="session")
async def test_uploads_openai_diarized_json_srt_and_vtt(tolk: Running, two_voices: Conversation) -> None:
    """OpenAI `response_format=diarized_json`: segments with `speaker`; Tolk's upload with `diarize`: SRT speaker
    prefixes and WebVTT voice tags."""
    wav = _wav(two_voices.pcm)

    async def post(http: aiohttp.ClientSession, path: str, **fields: str) -> str:
        form = aiohttp.FormData()
        form.add_field("file", wav, filename="talk.wav", content_type="audio/wav")
        for k, v in fields.items():
            form.add_field(k, v)
        async with http.post(f"{tolk.http}{path}", data=form) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()

    async with aiohttp.ClientSession() as http:  # the three at once: the pipeline batches them
        openai, srt, vtt = await asyncio.gather(
            post(http, "/v1/audio/transcriptions", model="whisper-1", response_format="diarized_json"),
            post(http, "/v1/transcriptions", response_format="srt", diarize="true"),
            post(http, "/v1/transcriptions", response_format="vtt", diarize="true"))
    segments = json.loads(openai)["segments"]
    assert {s["speaker"] for s in segments} == {"S1", "S2"}, segments
    s = score(two_voices, [{"start": seg["start"], "end": seg["end"], "speaker": seg["speaker"]}
                           for seg in segments for _ in seg["text"].split()])
    assert s.accuracy >= 0.8, s
    texts = {"srt": srt, "vtt": vtt}
    assert "\nS1: " in texts["srt"] and "\nS2: " in texts["srt"], texts["srt"]
    assert "<v S1>" in texts["vtt"] and "<v S2>" in texts["vtt"], texts["vtt"]
    vtt = webvtt.from_buffer(io.StringIO(texts["vtt"]))
    assert {c.voice for c in vtt} == {"S1", "S2"}


def test_tolk_listen_prints_who_speaks(tolk: Running, two_voices: Conversation, tmp_path: Path) -> None:
    path = tmp_path / "talk.wav"
    path.write_bytes(_wav(two_voices.pcm))
    out = subprocess.run([str(Path(sys.executable).parent / "tolk"), "listen", "--url", tolk.http, "--file",
                          str(path), "--language", "en", "--pace", "4", "--diarize"],
                         capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    finals = [line for line in out.stdout.splitlines() if not line.startswith(("… ", "  "))]
    assert {line.split("]")[0] + "]" for line in finals} >= {"[S1]", "[S2]"}, out.stdout


def test_a_later_decision_is_republished_as_a_revision(encoder: Ge2eEncoder, two_voices: Conversation) -> None:
    """A new voice's first short utterance is labelled as the closest speaker until that voice has said enough
    to be a speaker of its own; then the diarizer republishes the earlier utterance's labels (revision 1)."""
    x = np.frombuffer(two_voices.pcm, "<i2")
    a = next(t for t in two_voices.turns if t.speaker == "R1")
    b = [t for t in two_voices.turns if t.speaker == "R2"]
    session = SessionLabels(SessionVoices(max_speakers=8, threshold=THRESHOLD, merge_threshold=0.75), 0)
    cfg = DiarizerSettings()

    def seg(utt: int, start: float, end: float) -> Segment:
        audio = x[int(start * 16000):int(end * 16000)].tobytes()
        return Segment(session_id="s", utterance_id=utt, seq=utt, final_index=utt, kind=SegmentKind.FINAL,
                       audio=audio, start=start, end=end, language="en", speech_end_wall=0.0, partition=0,
                       diarize=True)

    first = session.label(encoder, seg(1, a.start, a.end), cfg)
    assert [t.spans[0].speaker for t in first] == ["S1"]
    short = seg(2, b[0].start, min(b[0].end, b[0].start + 2.0))  # under the 4 s a voice needs
    second = session.label(encoder, short, cfg)
    assert len(second) == 1 and second[0].speakers == 1  # given to S1 for now
    rest = session.label(encoder, seg(3, b[1].start, b[1].end), cfg)
    revised = [t for t in rest if t.utterance_id == 2]
    assert rest[0].spans[0].speaker == "S2" and rest[0].revision == 0
    assert revised and revised[0].revision == 1 and {s.speaker for s in revised[0].spans} == {"S2"}, rest


def _segment(conv: Conversation) -> list[Segment]:
    """`conv` cut into finals by the real segmenter (its defaults), as the diarizer receives them."""
    x = np.frombuffer(conv.pcm, "<i2").astype(np.float32) / 32768
    seg = UtteranceSegmenter(DualVad(WebRtcStream(2), SileroModel().stream(0.5), Vote.AND), SegmenterConfig())
    cuts = [c for i in range(0, len(x), 1600) for c in seg.push(x[i:i + 1600], wall=i / 16000)]
    cuts += seg.flush(wall=len(x) / 16000)
    return [Segment(session_id="s", utterance_id=u, seq=u, final_index=u, kind=SegmentKind.FINAL,
                    audio=(c.audio * 32768).astype("<i2").tobytes(), start=c.start, end=c.end, language="en",
                    speech_end_wall=0.0, partition=0, diarize=True)
            for u, c in enumerate([c for c in cuts if c.final], 1)]


@pytest.mark.parametrize("turns,seed", [((3.0, 15.0), 12), ((1.0, 3.0), 15)], ids=["long", "short"])
def test_four_speakers_are_counted_four(encoder: Ge2eEncoder, turns: tuple[float, float], seed: int) -> None:
    """loadtest.diarization's 4-speaker sets (#34). Long turns: one person speaks a single 4 s turn, which the
    segmenter's cut glues to the previous speaker's last words, so it starts two small clusters (1.5 s and 3 s,
    0.73 alike) and neither reached the 4 s of a speaker: 3 found. Short turns: the first final's 1.5 s mixed
    span was S1 for good, a fifth speaker. A small cluster now merges into one it is `threshold` alike, and a
    provisional S1 that never grew passes its label to the first established voice."""
    conv = build(4, turns, 60.0, seed=seed)
    session = SessionLabels(SessionVoices(max_speakers=8, threshold=THRESHOLD, merge_threshold=0.75), 0)
    cfg = DiarizerSettings()
    labelled: dict[int, SpeakerTurns] = {}
    for seg in _segment(conv):
        for t in session.label(encoder, seg, cfg):
            labelled[t.utterance_id] = t  # corrections replace what was sent
    assert session.voices.speakers() == 4
    words = [{"start": s.start, "end": s.end, "speaker": s.speaker} for t in labelled.values() for s in t.spans]
    scored = score(conv, words)
    assert scored.hyp_speakers == 4 and scored.accuracy >= 0.9, scored
    assert {s["speaker"] for s in words} == {"S1", "S2", "S3", "S4"}  # S1 handed over, not retired
