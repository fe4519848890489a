"""Deepgram's listen API at the edge, driven by the unmodified `deepgram-sdk` pointed at a real `tolk up`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from deepgram.core.api_error import ApiError

from actors.runtime.bus import Bus
from loadtest.client import stream_pcm
from loadtest.speech import Clip, clips, encode_audio
from loadtest.vendors import DeepgramRun, deepgram_client, stream_deepgram
from loadtest.wer import corpus_wer
from tests.conftest import Running, edge_server

pytestmark = [pytest.mark.asyncio(loop_scope="session")]
e2e = pytest.mark.e2e

LIVE = {"encoding": "linear16", "channels": 1, "language": "en-US", "interim_results": "true",
        "utterance_end_ms": 1000, "endpointing": 300, "punctuate": "true", "smart_format": "true"}


def clip(prefix: str) -> Clip:
    return next(c for c in clips("en") if c.name.startswith(prefix))


def check_live(run: DeepgramRun, utterance_end: bool = True) -> None:
    kinds = [getattr(m, "type", None) for _, m in run.messages]
    assert kinds and kinds[-1] == "Metadata" and kinds.count("Metadata") == 1, kinds
    assert "Error" not in kinds, [m for _, m in run.messages if getattr(m, "type", None) == "Error"]
    finals = run.finals
    assert finals and all(m.speech_final is not None and m.channel_index == [0, 1] for m in finals)
    first_final = kinds.index("Results") + [m.is_final for m in run.of("Results")].index(True)
    interims = [m for _, m in run.messages[:first_final] if getattr(m, "type", None) == "Results" and not m.is_final
                and m.channel.alternatives[0].transcript]
    assert interims, "an interim result arrives before the first final"
    words = [w for m in finals for w in m.channel.alternatives[0].words]
    assert words and all(w.punctuated_word and w.start <= w.end and 0 <= w.confidence <= 1 for w in words)
    if utterance_end:  # asked for, and the audio has a second without words after its last ones
        assert run.of("UtteranceEnd"), [(m.start, m.duration) for m in finals]
    assert run.of("Metadata")[0].duration > 0


@e2e
async def test_deepgram_and_tolk_clients_stream_at_once(tolk: Running) -> None:
    """Raw linear16 and a WAV file (header first, no `encoding`) through the Deepgram SDK, and a Tolk-protocol
    client, all on /v1/listen at the same time."""
    api = deepgram_client(tolk.http)
    a, b, c = clip("en_jfk"), clip("en_librispeech_2412"), clip("en_fleurs_000")
    pcm_a, rate_a = a.pcm16()
    pcm_c, rate_c = c.pcm16()
    raw, wav, native = await asyncio.gather(
        stream_deepgram(api, pcm_a + bytes(rate_a * 3), rate_a * 2, sample_rate=rate_a, **LIVE),  # + 1.5 s quiet
        stream_deepgram(api, b.path.read_bytes(), 32000, **{k: v for k, v in LIVE.items() if k != "encoding"}),
        stream_pcm(tolk.ws, pcm_c, rate_c, language="en"),
    )
    check_live(raw)
    check_live(wav, utterance_end=False)  # LibriSpeech's pauses are under the 1 s utterance_end_ms
    assert native.done and not native.errors and native.finals
    wer = corpus_wer([(a.reference, raw.text), (b.reference, wav.text)])
    print(f"\nDeepgram SDK WER {wer:.3f}: {raw.text!r} / {wav.text!r}; Tolk client: {native.text()!r}")
    assert wer <= 0.15
    assert corpus_wer([(c.reference, native.text())]) <= 0.15


@e2e
async def test_opus_in_ogg_and_webm(tolk: Running) -> None:
    """Deepgram's `encoding=opus` (Ogg Opus), and WebM Opus as MediaRecorder makes it (no `encoding`: sniffed)."""
    api = deepgram_client(tolk.http)
    cs = [clip("en_jfk"), clip("en_fleurs_003")]
    encoded = [encode_audio(np.frombuffer(c.pcm16()[0], "<i2"), c.pcm16()[1], container, "libopus", bitrate=24000)
               for c, container in zip(cs, ("ogg", "webm"), strict=True)]
    runs = await asyncio.gather(
        stream_deepgram(api, encoded[0], int(len(encoded[0]) / cs[0].seconds), pace=2.0, encoding="opus"),
        stream_deepgram(api, encoded[1], int(len(encoded[1]) / cs[1].seconds), pace=2.0, language="en"),
    )
    for c, run in zip(cs, runs, strict=True):
        kinds = [getattr(m, "type", None) for _, m in run.messages]
        assert kinds[-1] == "Metadata" and "Error" not in kinds, kinds
        assert abs(run.of("Metadata")[0].duration - c.seconds) < 1.0
    wer = corpus_wer([(c.reference, r.text) for c, r in zip(cs, runs, strict=True)])
    print(f"\nDeepgram SDK, Ogg/WebM Opus: WER {wer:.3f}: {[r.text for r in runs]}")
    assert wer <= 0.15


@e2e
async def test_control_messages_and_bad_input(tolk: Running) -> None:
    api = deepgram_client(tolk.http)
    c = clip("en_librispeech_61")
    pcm, rate = c.pcm16()
    async with api.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=rate, language="en") as conn:
        await conn.send_keep_alive()
        await conn._send({"type": "Bogus"})  # an unknown message: Deepgram's Error shape, and the stream goes on
        error = await asyncio.wait_for(conn.recv(), 10)
        assert error.type == "Error" and error.description and error.variant, error
        await conn._send("not json at all")
        assert (await asyncio.wait_for(conn.recv(), 10)).type == "Error"
        step = rate // 5 * 2
        for off in range(0, len(pcm), step):
            await conn.send_media(pcm[off:off + step])
            await asyncio.sleep(0.05)  # 4x real time
        await conn.send_finalize()
        await conn.send_close_stream()
        got = [m async for m in conn]
    finals = [m for m in got if m.type == "Results"]
    assert finals and all(m.is_final for m in finals), "no interim results unless asked for"
    assert got[-1].type == "Metadata"
    assert corpus_wer([(c.reference, " ".join(m.channel.alternatives[0].transcript for m in finals))]) <= 0.15

    for bad in ({"encoding": "speex-9"}, {"encoding": "linear16"}, {"encoding": "linear16", "sample_rate": 16000,
                                                                    "language": "tlh"}):
        with pytest.raises(ApiError) as err:
            async with api.listen.v1.connect(model="nova-3", **bad):
                pass
        assert err.value.status_code == 400, bad
    async with aiohttp.ClientSession() as http:  # the refusal's body is Deepgram's
        async with http.get(f"{tolk.http}/v1/listen?encoding=speex-9&model=nova-3") as resp:
            body = await resp.json()
            assert resp.status == 400 and set(body) == {"err_code", "err_msg", "request_id"}, body
        # Not raw audio and no WAV header: Deepgram's Error, then a close; the server is fine.
        async with http.ws_connect(f"{tolk.ws}?model=nova-3") as ws:
            await ws.send_bytes(b"\x00\x01garbage" * 100)
            msg = await ws.receive_json(timeout=10)
            assert msg["type"] == "Error" and msg["variant"] == "unsupported_encoding", msg
        # A Tolk client is still a Tolk client: binary first is `audio_before_start`, as before.
        async with http.ws_connect(tolk.ws) as ws:
            await ws.send_bytes(b"\x00" * 3200)
            assert (await ws.receive_json(timeout=10))["code"] == "audio_before_start"


@e2e
async def test_prerecorded(tolk: Running) -> None:
    api = deepgram_client(tolk.http)
    cs = [clip("en_jfk"), clip("en_fleurs_003")]
    results = await asyncio.gather(*(api.listen.v1.media.transcribe_file(
        request=c.path.read_bytes(), model="nova-3", language="en", punctuate=True, utterances=True) for c in cs))
    hyps = [r.results.channels[0].alternatives[0].transcript for r in results]
    wer = corpus_wer([(c.reference, h) for c, h in zip(cs, hyps, strict=True)])
    print(f"\nDeepgram pre-recorded WER {wer:.3f}: {hyps}")
    assert wer <= 0.15
    for c, r in zip(cs, results, strict=True):
        assert 0 < r.metadata.duration <= c.seconds + 0.5 and r.metadata.channels == 1
        alt = r.results.channels[0].alternatives[0]
        assert alt.words and 0 < alt.confidence <= 1 and r.results.utterances
    with pytest.raises(ApiError) as err:
        await api.listen.v1.media.transcribe_url(url="https://example.com/audio.wav", model="nova-3")
    assert err.value.status_code == 400 and "not supported" in json.dumps(err.value.body), err.value.body
    with pytest.raises(ApiError) as err:
        await api.listen.v1.media.transcribe_file(request=b"definitely not audio" * 50, model="nova-3")
    assert err.value.status_code == 400 and err.value.body["err_code"] == "Bad Request", err.value.body


@pytest_asyncio.fixture(loop_scope="session")
async def guarded(bus: Bus) -> AsyncIterator[str]:
    async with edge_server(bus, api_tokens="dg-key-1") as url:
        yield url


async def test_deepgram_token_auth_maps_onto_api_tokens(guarded: str) -> None:
    """`Authorization: Token <key>` is an API token; a wrong one gets Deepgram's 401 body."""
    good, bad = deepgram_client(guarded, "dg-key-1"), deepgram_client(guarded, "wrong")
    with pytest.raises(ApiError) as err:
        async with bad.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000):
            pass
    assert err.value.status_code == 401
    with pytest.raises(ApiError) as err:
        await bad.listen.v1.media.transcribe_file(request=b"\x00" * 100, model="nova-3")
    assert err.value.status_code == 401 and err.value.body["err_code"] == "INVALID_AUTH", err.value.body
    async with good.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000) as conn:
        await conn.send_keep_alive()  # accepted: no pipeline behind this edge, so nothing more to check


async def test_finalize_flushes_mid_speech(tolk: Running) -> None:
    """#35: `Finalize` ends the open utterance now (Deepgram marks that final `from_finalize`); the speech after
    it is another utterance, and nothing is lost between the two."""
    api = deepgram_client(tolk.http)
    c = clip("en_jfk")
    pcm, rate = c.pcm16()
    cut = rate * 2 * 4  # mid-sentence
    async with api.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=rate, language="en") as conn:
        await conn.send_media(pcm[:cut])
        await conn.send_finalize()
        await conn.send_media(pcm[cut:])
        await conn.send_close_stream()
        got = [m async for m in conn]
    finals = [m for m in got if m.type == "Results" and m.is_final]
    flushed = [m for m in finals if getattr(m, "from_finalize", None)]
    assert len(flushed) == 1 and not flushed[0].speech_final, [(m.start, m.from_finalize) for m in finals]
    assert abs(flushed[0].start + flushed[0].duration - 4.0) < 0.05 or flushed[0].start + flushed[0].duration < 4.0
    assert flushed[0].channel.alternatives[0].transcript, "the words before Finalize"
    after = [m for m in finals if m.start >= 4.0 - 1e-3]
    assert after and finals.index(flushed[0]) < finals.index(after[0])
    text = " ".join(m.channel.alternatives[0].transcript for m in finals)
    assert corpus_wer([(c.reference, text)]) <= 0.2, text


async def test_keyterm_and_keywords_are_the_sessions_vocabulary(tolk: Running) -> None:
    """#35: `keyterm` (and `keywords`, boost dropped) spell names as given; too many terms are Deepgram's 400."""
    api = deepgram_client(tolk.http)
    c = next(c for c in clips("en") if c.name == "en_conversational_multilingual_ipa.wav")
    pcm, rate = c.pcm16()
    async with api.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=rate, language="en",
                                     keyterm="Sloth", keywords="Kubernetes:2") as conn:
        await conn.send_media(pcm)
        await conn.send_close_stream()
        got = [m async for m in conn]
    text = " ".join(m.channel.alternatives[0].transcript for m in got if m.type == "Results" and m.is_final)
    assert "Sloth" in text, text
    async with aiohttp.ClientSession() as http:
        query = "&".join(f"keyterm=t{i}" for i in range(101))
        async with http.get(f"{tolk.http}/v1/listen?encoding=linear16&sample_rate=16000&{query}") as resp:
            body = await resp.json()
            assert resp.status == 400 and "keyterm" in body["err_msg"], body


async def test_endpointing_per_session(tolk: Running) -> None:
    """#35: `endpointing=300` ends JFK's phrases at their pauses (speech_final); `endpointing=false` ends none
    (one final, at CloseStream); `utterance_end_ms=1000` sends UtteranceEnd only where 1 s without words
    followed the last final word (the VAD's onset of the next words, not Whisper's word times, which stretch back
    into the pre-roll); outside 100-5000 ms: Deepgram's 400 at the handshake."""
    api = deepgram_client(tolk.http)
    c = clip("en_jfk")
    pcm, rate = c.pcm16()
    audio = pcm + bytes(rate * 2 * 2)  # and 2 s of silence: the last words get their UtteranceEnd

    async def run(**params: Any) -> list[Any]:
        async with api.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=rate, language="en",
                                         **params) as conn:
            await conn.send_media(audio)
            await conn.send_close_stream()
            return [m async for m in conn]

    short, patient, never = await asyncio.gather(
        run(endpointing=300, utterance_end_ms=1000, interim_results="true"),
        run(endpointing=300, utterance_end_ms=2000), run(endpointing="false"))
    finals = [m for m in short if m.type == "Results" and m.is_final]
    assert len(finals) >= 3 and all(m.speech_final for m in finals[:-1]), [(m.start, m.speech_final) for m in finals]
    assert len([m for m in never if m.type == "Results" and m.is_final]) == 1
    # JFK pauses 1.1 s after "Americans" and under a second after the later phrases; then the 2 s of silence.
    for got, n in ((short, 2), (patient, 1)):
        ends = [i for i, m in enumerate(got) if m.type == "UtteranceEnd"]
        assert len(ends) >= n and ends[-1] == len(got) - 2, [m.type for m in got]  # the last words, then Metadata
        assert n > 1 or len(ends) == 1, [got[i].last_word_end for i in ends]
    async with aiohttp.ClientSession() as http:
        for bad in ("50", "9000", "soon"):
            async with http.get(f"{tolk.http}/v1/listen?encoding=linear16&sample_rate=16000&endpointing={bad}") \
                    as resp:
                body = await resp.json()
                assert resp.status == 400 and "endpointing" in body["err_msg"], body
