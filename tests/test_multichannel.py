"""Multichannel audio (issue #34): one pipeline per channel, every result tagged with its channel, on Tolk's own
protocol, Deepgram's (`multichannel=true`, the real `deepgram-sdk`) and Speechmatics' (channel diarization, the
real `speechmatics-rt` multichannel client), against the shared `tolk up` with real models and real speech: two
different people's clips, one on each channel, speaking over each other."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import subprocess
import sys
import uuid
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from loadtest.client import SessionRun, stream_pcm
from loadtest.conversation import interleave
from loadtest.speech import Clip, clips, encode_audio
from loadtest.vendors import DeepgramRun, deepgram_client, stream_deepgram
from loadtest.wer import corpus_wer
from tests.conftest import Running

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]

WER_BOUND = 0.15
RATE = 16000
TOLK = str(Path(sys.executable).parent / "tolk")


def clip(prefix: str) -> Clip:
    return next(c for c in clips("en") if c.name.startswith(prefix))


LEFT, RIGHT = clip("en_jfk"), clip("en_stereo_left_libri")  # two different people


def stereo(delay_s: float = 1.0) -> bytes:
    """JFK on the left; the LibriSpeech reader on the right from `delay_s` in, over him; 1.5 s of quiet after."""
    left, _ = LEFT.pcm16()
    right, _ = RIGHT.pcm16()
    tail = bytes(int(1.5 * RATE) * 2)
    return interleave(left + tail, bytes(int(delay_s * RATE) * 2) + right + tail)


def by_channel(run: SessionRun) -> dict[int, str]:
    out: dict[int, list[str]] = {}
    for r in run.finals:
        if r["text"]:
            out.setdefault(r["channel"], []).append(r["text"])
    return {c: " ".join(t) for c, t in out.items()}


def check_channels_text(texts: dict[Any, str], left: Any, right: Any) -> None:
    assert set(texts) == {left, right}, texts
    for key, c in ((left, LEFT), (right, RIGHT)):
        wer = corpus_wer([(c.reference, texts[key])])
        assert wer <= WER_BOUND, (key, wer, texts[key])


async def test_native_stereo_pcm_one_pipeline_per_channel(tolk: Running) -> None:
    """Interleaved s16 stereo: each channel's finals read its own clip (none of the other's words), partials,
    finals and words say their channel, and the session ends with one `done`; broken multichannel sessions
    started beside it end alone."""

    async def broken() -> list[str]:
        await asyncio.sleep(2.0)
        codes = []
        for start, frames in (({"channels": 2}, [bytes(6)]), ({"channels": 2, "encoding": "ogg_opus"}, [b"OggS" * 64]),
                              ({"channels": 3}, [bytes(3 * 2 * 1600), {"type": "bogus"}])):
            err, _ = await _refused(tolk.ws, start, frames)
            codes.append(err["code"])
        return codes

    run, codes = await asyncio.gather(stream_pcm(tolk.ws, stereo(), RATE, pace=1.5, channels=2, timeout=120),
                                      broken())
    assert codes == ["invalid_frame", "invalid_audio", "unknown_type"], codes
    assert not run.errors and run.done, run.errors
    assert run.started["channels"] == 2
    check_channels_text(by_channel(run), 0, 1)
    assert {r["channel"] for r in run.partials} == {0, 1}, "partials come from both channels"
    for r in run.results:
        assert all(w["channel"] == r["channel"] for w in r["words"]), r
    for channel in (0, 1):  # each channel's results in its own seq order
        seqs = [r["seq"] for r in run.results if r["channel"] == channel]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    # The export merges the channels in time order; the channel is each cue's speaker.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{tolk.http}/v1/sessions/{run.session_id}/transcript?format=vtt") as resp:
            vtt = await resp.text()
            assert resp.status == 200, vtt
    voices = {v: " ".join(re.findall(rf"<v {v}>(.*?)</v>", vtt, re.DOTALL)).replace("\n", " ") for v in ("ch0", "ch1")}
    check_channels_text(voices, "ch0", "ch1")


async def test_python_client_multichannel(tolk: Running) -> None:
    """`tolk_client.connect(..., channels=2)`: results say their `audio_channel`, each channel's seqs counted on
    their own (none dropped as already seen)."""
    import tolk_client

    pcm = stereo()
    texts: dict[int, list[str]] = {}
    async with tolk_client.connect(tolk.http, language="en", channels=2) as s:
        for i in range(0, len(pcm), 6400):  # 100 ms of both channels, at 4x real time
            await s.send(pcm[i:i + 6400])
            await asyncio.sleep(0.025)
        await s.stop()
        async for r in s:
            if r.is_final and r.text:
                texts.setdefault(r.audio_channel, []).append(r.text)
    check_channels_text({c: " ".join(t) for c, t in texts.items()}, 0, 1)


async def test_native_stereo_ogg_opus_with_speakers(tolk: Running) -> None:
    """A stereo Ogg Opus stream (a recorder's), decoded at the edge with its channels kept; with `diarize` too,
    speakers are numbered within each channel (one voice per channel here: each channel's is S1)."""
    samples = np.frombuffer(stereo(), "<i2")
    ogg = encode_audio(samples, RATE, "ogg", "libopus", bitrate=48000, channels=2)
    run = SessionRun()
    async with aiohttp.ClientSession() as http, http.ws_connect(tolk.ws) as ws:
        await ws.send_json({"type": "start", "encoding": "ogg_opus", "language": "en", "channels": 2,
                            "diarize": True})
        assert (await ws.receive_json(timeout=30))["type"] == "started"
        for i in range(0, len(ogg), 4000):
            await ws.send_bytes(ogg[i:i + 4000])
            await asyncio.sleep(0.05)
        await ws.send_json({"type": "stop"})
        async for msg in ws:
            data = json.loads(msg.data)
            if data["type"] == "done":
                run.done = True
            elif data["type"] == "error":
                run.errors.append(data)
            else:
                run.results.append(data)
    assert run.done and not run.errors, run.errors
    check_channels_text(by_channel(run), 0, 1)
    labels: dict[int, set[str]] = {}
    for r in run.results:
        if r["type"] in ("final", "speakers") and r["text"]:
            assert "speaker" in r, r
            labels.setdefault(r["channel"], set()).update(w["speaker"] for w in r["words"] if w["speaker"])
    assert labels.get(0) == {"S1"} and labels.get(1, {"S1"}) == {"S1"}, labels


async def _refused(url: str, start: dict[str, Any], then: list[Any] | None = None) -> tuple[dict[str, Any], Any]:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json({"type": "start", "language": "en", **start})
        first = await ws.receive_json(timeout=30)
        for frame in then or []:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_json(frame)
        if first["type"] == "started":
            first = await ws.receive_json(timeout=30)
        msg = await ws.receive(timeout=30)
        return first, (msg.type, ws.close_code)


async def test_native_bad_multichannel_input_is_refused_clearly(tolk: Running) -> None:
    for channels in (0, 9, "2", True, 1.5):
        err, _ = await _refused(tolk.ws, {"channels": channels})
        assert err["type"] == "error" and err["code"] == "unsupported_channels", (channels, err)
        assert "1-8" in err["message"]
    err, _ = await _refused(tolk.ws, {"channels": 2, "session_id": "mc-resume", "resume_from": 3,
                                      "resume_token": "x"})
    assert err["code"] == "unsupported_channels" and "resumed" in err["message"], err
    # A multichannel session that dropped is not resumed, even by a start that leaves `channels` out.
    sid = f"mc-once-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as http, http.ws_connect(tolk.ws) as ws:
        await ws.send_json({"type": "start", "language": "en", "channels": 2, "session_id": sid})
        started = await ws.receive_json(timeout=30)
        await ws.send_bytes(bytes(6400))
    err, _ = await _refused(tolk.ws, {"session_id": sid, "resume_from": 0, "resume_token": started["resume_token"]})
    assert err["code"] == "unsupported_channels" and "was multichannel" in err["message"], err
    # Half a stereo frame (6 bytes of s16 stereo): the session ends with invalid_frame, 1007.
    err, (_, close) = await _refused(tolk.ws, {"channels": 2}, [bytes(6)])
    assert err["code"] == "invalid_frame" and "2 interleaved channels" in err["message"], err
    assert close == 1007
    # A mono Ogg Opus stream where two channels were announced.
    mono = encode_audio(np.frombuffer(LEFT.pcm16()[0][:32000], "<i2"), RATE, "ogg", "libopus")
    err, _ = await _refused(tolk.ws, {"channels": 2, "encoding": "ogg_opus"}, [mono])
    assert err["code"] == "invalid_audio" and "1 channel" in err["message"], err
    # A listener has no audio: `channels` in its subscribe is reported, and the connection goes on.
    async with aiohttp.ClientSession() as http, http.ws_connect(tolk.ws) as ws:
        await ws.send_json({"type": "subscribe", "channel": "nope", "channels": 2})
        err = await ws.receive_json(timeout=30)
        assert err["code"] == "invalid_subscribe" and "channels" in err["message"], err
        assert not ws.closed


# ---------------------------------------------------------------------------------------------------- Deepgram
async def test_deepgram_sdk_multichannel(tolk: Running) -> None:
    """`multichannel=true&channels=2` with linear16: Results per channel, `channel_index` [i, 2] as Deepgram sends
    them, each channel's transcript its own clip; Metadata says 2 channels."""
    api = deepgram_client(tolk.http)
    run = await stream_deepgram(api, stereo(), RATE * 4, pace=1.5, encoding="linear16", sample_rate=RATE,
                                channels=2, multichannel="true", language="en", interim_results="true",
                                utterance_end_ms=1000)
    kinds = [getattr(m, "type", None) for _, m in run.messages]
    assert "Error" not in kinds and kinds[-1] == "Metadata", kinds
    assert run.of("Metadata")[0].channels == 2
    check_deepgram_channels(run)
    interims = {m.channel_index[0] for m in run.of("Results") if not m.is_final}
    assert interims == {0, 1}
    assert all(m.channel[1] == 2 for m in run.of("UtteranceEnd")), run.of("UtteranceEnd")


async def test_deepgram_sdk_multichannel_wav_file(tolk: Running) -> None:
    """A stereo WAV streamed header first, `multichannel=true` without `channels` or `encoding`: the channel count
    comes from the file, as at Deepgram."""
    run = await stream_deepgram(deepgram_client(tolk.http), stereo_wav(), RATE * 4, pace=2.0, multichannel="true",
                                language="en")
    assert run.of("Metadata")[0].channels == 2
    check_deepgram_channels(run)


async def test_deepgram_multichannel_wav_header_in_pieces(tolk: Running) -> None:
    """The same without the SDK, the WAV's header cut into 4-byte messages (a client may send it in any pieces):
    the session waits for the whole header and still reads 2 channels from it."""
    wav = stereo_wav()[:44 + RATE * 2 * 2 * 4]  # the header and 4 s: both speakers are in by then
    messages: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(f"{tolk.ws}?model=nova-3&multichannel=true&language=en") as ws:
        for i in range(0, 44, 4):
            await ws.send_bytes(wav[i:i + 4])
        for i in range(44, len(wav), RATE):
            await ws.send_bytes(wav[i:i + RATE])
        await ws.send_str(json.dumps({"type": "CloseStream"}))
        while not messages or messages[-1]["type"] != "Metadata":
            messages.append(await ws.receive_json(timeout=60))
    assert not [m for m in messages if m["type"] == "Error"], messages
    assert messages[-1]["channels"] == 2
    finals = [m for m in messages if m["type"] == "Results" and m["is_final"]]
    assert all(m["channel_index"][1] == 2 for m in finals), finals
    assert {m["channel_index"][0] for m in finals if m["channel"]["alternatives"][0]["transcript"]} == {0, 1}


def check_deepgram_channels(run: DeepgramRun) -> None:
    """Every final says it is one of 2 channels, and each channel's finals read as its own clip."""
    texts: dict[int, list[str]] = {}
    for m in run.finals:
        assert m.channel_index[1] == 2, m.channel_index
        if m.channel.alternatives[0].transcript:
            texts.setdefault(m.channel_index[0], []).append(m.channel.alternatives[0].transcript)
    check_channels_text({c: " ".join(t) for c, t in texts.items()}, 0, 1)


def stereo_wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(stereo())
    return buf.getvalue()


async def test_deepgram_sdk_prerecorded_multichannel(tolk: Running) -> None:
    """Pre-recorded `multichannel=true`: `results.channels[i]` per channel (each its own clip's words), utterances
    tagged with their channel, `metadata.channels` 2; without it, one channel of both mixed."""
    api = deepgram_client(tolk.http)
    audio = stereo_wav()
    multi, mixed = await asyncio.gather(
        api.listen.v1.media.transcribe_file(request=audio, model="nova-3", language="en", multichannel=True,
                                            utterances=True),
        api.listen.v1.media.transcribe_file(request=audio, model="nova-3", language="en"))
    assert multi.metadata.channels == 2 and len(multi.results.channels) == 2
    check_channels_text({i: ch.alternatives[0].transcript for i, ch in enumerate(multi.results.channels)}, 0, 1)
    assert {u.channel for u in multi.results.utterances} == {0, 1}
    assert mixed.metadata.channels == 1 and len(mixed.results.channels) == 1


async def test_deepgram_multichannel_bad_input(tolk: Running) -> None:
    """Deepgram's 400 at the handshake (the SDK raises its ApiError; the body is `err_code`, `err_msg`)."""
    from deepgram.core.api_error import ApiError

    api = deepgram_client(tolk.http)
    for bad in ({"channels": 9}, {"channels": 0}, {"channels": "two"}):
        with pytest.raises(ApiError) as err:
            async with api.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=RATE, multichannel="true",
                                             **bad):
                pass
        assert err.value.status_code == 400, bad
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{tolk.http}/v1/listen?model=nova-3&multichannel=true&channels=9&encoding=linear16"
                            "&sample_rate=16000") as resp:
            body = await resp.json()
            assert resp.status == 400 and body["err_code"] == "Bad Request" and "channels" in body["err_msg"], body


# ---------------------------------------------------------------------------------------------------- Uploads
def _form(audio: bytes, name: str, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", audio, filename=name)
    for key, value in {"language": "en", **fields}.items():
        form.add_field(key, value)
    return form


async def _upload(http: aiohttp.ClientSession, url: str, audio: bytes, name: str, **fields: str) -> Any:
    async with http.post(f"{url}/v1/transcriptions", data=_form(audio, name, **fields)) as resp:
        body = await (resp.json() if resp.content_type == "application/json" else resp.text())
        assert resp.status == 200, body
        return body


async def _upload_events(http: aiohttp.ClientSession, url: str, audio: bytes, **fields: str) -> list[tuple[str, Any]]:
    """`stream=true`: the server-sent events, as (event, data)."""
    events: list[tuple[str, Any]] = []
    async with http.post(f"{url}/v1/transcriptions", data=_form(audio, "call.wav", stream="true", **fields)) as resp:
        assert resp.status == 200, await resp.text()
        event = "message"
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                events.append((event, json.loads(line[5:])))
    return events


def _srt_by_voice(srt: str) -> dict[str, str]:
    """An SRT's cue texts by their `ch0: ` prefix (a cue's second line goes with its first)."""
    out: dict[str, list[str]] = {}
    for block in srt.strip().split("\n\n"):
        text = " ".join(block.splitlines()[2:])
        who, _, said = text.partition(": ")
        out.setdefault(who, []).append(said)
    return {who: " ".join(t) for who, t in out.items()}


async def test_native_upload_transcribes_each_channel(tolk: Running) -> None:
    """`POST /v1/transcriptions` with `channels=2`: a stereo WAV (verbose_json), the same call as stereo Ogg Opus
    (SRT) and streamed (server-sent events, then its export) each come back per channel, every segment, word,
    event and cue tagged with its channel and each channel's text its own clip's; without `channels` the file is
    mixed down as before."""
    wav_file = stereo_wav()
    ogg = encode_audio(np.frombuffer(stereo(), "<i2"), RATE, "ogg", "libopus", bitrate=48000, channels=2)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        verbose, srt, events, mixed = await asyncio.gather(
            _upload(http, tolk.http, wav_file, "call.wav", channels="2", response_format="verbose_json"),
            _upload(http, tolk.http, ogg, "call.ogg", channels="2", response_format="srt"),
            _upload_events(http, tolk.http, wav_file, channels="2"),
            _upload(http, tolk.http, wav_file, "call.wav", response_format="verbose_json"))
        # verbose_json: each channel's own text, and every segment and word says its channel (its speaker too)
        check_channels_text({c["channel"]: c["text"] for c in verbose["channels"]}, 0, 1)
        assert {s["channel"] for s in verbose["segments"]} == {0, 1}, verbose["segments"]
        for seg in verbose["segments"]:
            assert seg["speaker"] == f"ch{seg['channel']}", seg
            assert seg["words"] and all(w["channel"] == seg["channel"] for w in seg["words"]), seg
        # SRT of the Opus file: the channel is each cue's speaker prefix
        check_channels_text(_srt_by_voice(srt), "ch0", "ch1")
        # Streamed: events carry their channel under one session id; `done` holds each channel's text
        finals = [d for e, d in events if e == "final"]
        assert {d["session_id"] for d in finals} == {finals[0]["session_id"]}
        texts: dict[int, list[str]] = {}
        for d in finals:
            assert all(w["channel"] == d["channel"] for w in d["words"]), d
            if d["text"]:
                texts.setdefault(d["channel"], []).append(d["text"])
        check_channels_text({c: " ".join(t) for c, t in texts.items()}, 0, 1)
        assert {d["channel"] for e, d in events if e == "partial"} == {0, 1}
        done = [d for e, d in events if e == "done"]
        assert len(done) == 1 and events[-1][0] == "done", [e for e, _ in events]
        check_channels_text({c["channel"]: c["text"] for c in done[0]["channels"]}, 0, 1)
        # ... and the streamed upload's export merges its channels, each cue's voice its channel
        export = f"{tolk.http}/v1/sessions/{finals[0]['session_id']}/transcript"
        async with http.get(f"{export}?format=vtt") as resp:
            vtt = await resp.text()
            assert resp.status == 200, vtt
        async with http.get(f"{export}?format=verbose_json") as resp:
            exported = await resp.json()
        check_channels_text({c["channel"]: c["text"] for c in exported["channels"]}, 0, 1)
        assert all(s["speaker"] == f"ch{s['channel']}" for s in exported["segments"]), exported["segments"]
    voices = {v: " ".join(re.findall(rf"<v {v}>(.*?)</v>", vtt, re.DOTALL)).replace("\n", " ") for v in ("ch0", "ch1")}
    check_channels_text(voices, "ch0", "ch1")
    # Without `channels`: one transcript of both sides mixed, as before (no channel anywhere)
    assert mixed["text"] and "channels" not in mixed, mixed
    assert all("channel" not in s and "speaker" not in s for s in mixed["segments"]), mixed


async def test_native_upload_bad_channels_are_refused_clearly(tolk: Running) -> None:
    """Out of range, not a number, or another count than the file's: a 400 in the API's error shape before anything
    is transcribed (a stream is refused before its events start); the WebSocket upload's error message likewise."""
    mono = io.BytesIO()
    with wave.open(mono, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(LEFT.pcm16()[0][:RATE * 2])
    cases = [(stereo_wav(), {"channels": "9"}, "unsupported_channels", "1-8"),
             (stereo_wav(), {"channels": "two"}, "unsupported_channels", "1-8"),
             (stereo_wav(), {"channels": "0"}, "unsupported_channels", "1-8"),
             (mono.getvalue(), {"channels": "2"}, "invalid_channels", "has 1 channel"),
             (stereo_wav(), {"channels": "3"}, "invalid_channels", "has 2 channels"),
             (stereo_wav(), {"channels": "3", "stream": "true"}, "invalid_channels", "has 2 channels")]
    async with aiohttp.ClientSession() as http:
        for audio, fields, code, says in cases:
            async with http.post(f"{tolk.http}/v1/transcriptions", data=_form(audio, "x.wav", **fields)) as resp:
                body = await resp.json()
                assert resp.status == 400 and body["error"]["code"] == code, (fields, resp.status, body)
                assert says in body["error"]["message"], body
        for start, code in (({"channels": 9}, "unsupported_channels"), ({"channels": 3}, "invalid_channels")):
            async with http.ws_connect(tolk.http.replace("http", "ws") + "/v1/transcriptions/ws") as ws:
                await ws.send_json({"type": "file", "language": "en", **start})
                if code == "invalid_channels":
                    audio = stereo_wav()
                    for i in range(0, len(audio), 65536):
                        await ws.send_bytes(audio[i:i + 65536])
                    await ws.send_json({"type": "end"})
                err = await ws.receive_json(timeout=60)
                assert err["type"] == "error" and err["code"] == code, (start, err)


async def test_tolk_listen_prints_each_lines_channel(tolk: Running, tmp_path: Path) -> None:
    """`tolk listen --file call.wav --channels 2`: a multichannel session, every final line starting with its
    channel (`[ch0] `), each channel's lines its own clip's; a count the file does not have is a clear error."""
    path = tmp_path / "call.wav"
    path.write_bytes(stereo_wav())
    out = await asyncio.to_thread(
        subprocess.run, [TOLK, "listen", "--url", tolk.http, "--file", str(path), "--language", "en", "--channels",
                         "2", "--pace", "2"], capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr
    finals = [line for line in out.stdout.splitlines() if not line.startswith("… ")]
    assert finals and all(re.match(r"\[ch[01]\] ", line) for line in finals), out.stdout
    partials = [line for line in out.stdout.splitlines() if line.startswith("… ")]
    assert partials and all(re.match(r"… \[ch[01]\] ", line) for line in partials), out.stdout
    texts = {c: " ".join(line[6:] for line in finals if line.startswith(f"[ch{c}] ")) for c in (0, 1)}
    check_channels_text(texts, 0, 1)
    bad = await asyncio.to_thread(
        subprocess.run, [TOLK, "listen", "--url", tolk.http, "--file", str(path), "--channels", "3"],
        capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and "has 2 channels, not 3" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


# ---------------------------------------------------------------------------------------------------- Speechmatics
async def test_speechmatics_channel_diarization_with_its_sdk(tolk: Running) -> None:
    """The real multichannel client (`speechmatics.rt.AsyncMultiChannelClient`): `AddChannelAudio` per label,
    `ChannelAudioAdded` acks, `EndOfChannel`; each AddTranscript carries its `channel` label, and its words'
    speaker is that label (for a call, the channel is the speaker)."""
    from speechmatics.rt import (
        AsyncMultiChannelClient,
        AudioEncoding,
        AudioFormat,
        ServerMessageType,
        TranscriptionConfig,
    )

    # The two sides of the stereo call (this client stops every channel when its shortest source ends).
    frames = np.frombuffer(stereo(), "<i2").reshape(-1, 2)
    left, right = frames[:, 0].tobytes(), frames[:, 1].tobytes()
    messages: list[dict[str, Any]] = []
    url = tolk.ws.replace("/v1/listen", "/v2")
    async with AsyncMultiChannelClient(api_key="unused-here", url=url) as client:
        for kind in (ServerMessageType.ADD_TRANSCRIPT, ServerMessageType.ADD_PARTIAL_TRANSCRIPT,
                     ServerMessageType.RECOGNITION_STARTED, ServerMessageType.END_OF_TRANSCRIPT,
                     ServerMessageType.ERROR, ServerMessageType.WARNING):
            client.on(kind, messages.append)
        done = asyncio.Event()
        client.on(ServerMessageType.END_OF_TRANSCRIPT, lambda _: done.set())
        config = TranscriptionConfig(language="en", enable_partials=True, diarization="channel",
                                     channel_diarization_labels=["agent", "customer"])
        await client.transcribe({"a": io.BytesIO(left), "b": io.BytesIO(right)}, transcription_config=config,
                                audio_format=AudioFormat(encoding=AudioEncoding.PCM_S16LE, sample_rate=RATE,
                                                         chunk_size=3200), timeout=120)
        # This client's transcribe() returns once the audio and EndOfChannel are sent; the results follow.
        await asyncio.wait_for(done.wait(), 120)
    kinds = [m["message"] for m in messages]
    assert "Error" not in kinds, [m for m in messages if m["message"] == "Error"]
    assert kinds[0] == "RecognitionStarted" and messages[0]["channels"] == ["agent", "customer"], messages[0]
    assert kinds[-1] == "EndOfTranscript", kinds
    texts: dict[str, list[str]] = {}
    for m in messages:
        if m["message"] in ("AddTranscript", "AddPartialTranscript"):
            assert m["channel"] in ("agent", "customer"), m
            for r in m["results"]:
                assert r["channel"] == m["channel"] and r["alternatives"][0]["speaker"] == m["channel"], r
            if m["message"] == "AddTranscript" and m["metadata"]["transcript"]:
                texts.setdefault(m["channel"], []).append(m["metadata"]["transcript"])
    check_channels_text({c: " ".join(t) for c, t in texts.items()}, "agent", "customer")


async def test_speechmatics_channel_errors(tolk: Running) -> None:
    """Speechmatics' Error shapes: channel diarization without labels, duplicate labels, too many; audio for a
    channel that does not exist; binary AddAudio in a channel session."""
    url = tolk.ws.replace("/v1/listen", "/v2")
    audio = {"type": "raw", "encoding": "pcm_s16le", "sample_rate": RATE}

    async def start(config: dict[str, Any], then: list[Any] | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.send_json({"message": "StartRecognition", "audio_format": audio,
                                "transcription_config": {"language": "en", **config}})
            for frame in then or []:
                await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_json(frame))
            async for msg in ws:
                out.append(json.loads(msg.data))
            out.append({"close": ws.close_code})
        return out

    for config, why in (({"diarization": "channel"}, "channel_diarization_labels"),
                        ({"diarization": "channel", "channel_diarization_labels": ["a", "a"]}, "unique"),
                        ({"diarization": "channel", "channel_diarization_labels": [f"c{i}" for i in range(9)]}, "1-8"),
                        ({"channel_diarization_labels": ["a", "b"]}, "diarization")):
        msgs = await start(config)
        assert msgs[0]["message"] == "Error" and msgs[0]["type"] == "invalid_config", (config, msgs)
        assert why in msgs[0]["reason"] and msgs[-1]["close"] == 1003, (config, msgs)
    labels = {"diarization": "channel", "channel_diarization_labels": ["agent", "customer"]}
    msgs = await start(labels, [{"message": "AddChannelAudio", "channel": "boss",
                                 "data": base64.b64encode(bytes(3200)).decode()}])
    assert msgs[0]["message"] == "RecognitionStarted"
    assert msgs[1]["message"] == "Error" and msgs[1]["type"] == "invalid_message" and "boss" in msgs[1]["reason"]
    msgs = await start(labels, [bytes(3200)])
    assert msgs[1]["message"] == "Error" and msgs[1]["type"] == "protocol_error" and "AddChannelAudio" in \
        msgs[1]["reason"], msgs
    msgs = await start({}, [{"message": "AddChannelAudio", "channel": "agent", "data": ""}])
    assert msgs[1]["message"] == "Error" and "channel_diarization_labels" in msgs[1]["reason"], msgs
