"""A segmenter killed mid-utterance loses nothing: its held audio is replayed by the next one (real nats-server,
real `tolk actor segmenter` processes, real speech, the STT model reading the finals back)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from actors.runtime import pools, topology
from actors.runtime.bus import Bus
from actors.runtime.embedded import EmbeddedNats
from actors.runtime.partition import partition_for
from actors.segmenter.audio import decode_pcm
from actors.segmenter.segmenter import UtteranceSegmenter
from actors.segmenter.vad import DualVad, SileroModel, Vote, WebRtcStream
from actors.stt.engine import SttRequest, WhisperEngine
from actors.stt.models import resolve
from loadtest.speech import clips
from loadtest.wer import corpus_wer
from schemas import AudioChunk, Encoding, ResultKind, Segment, Transcript, decode

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIP = "en_librispeech_2412-153948-0000.wav"  # two utterances: 0.0-7.65 s and 7.84-11.14 s
CHUNK = 320  # 20 ms: the held-chunk count of a real microphone


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bus(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Bus, str]]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))  # its own: segmenters re-create their consumers
    url = await server.start()
    b = await Bus.connect(url, name="test-segmenter-crash")
    await topology.apply(b.js, topology.load())
    yield b, url
    await b.close()
    await server.stop()


def segmenter(url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TOLK_NATS_URL": url, "TOLK_METRICS_PORT": "-1", "TOLK_LOG_LEVEL": "INFO"}
    return subprocess.Popen([str(Path(sys.executable).parent / "tolk"), "actor", "segmenter"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def consumed(b: Bus, durable: str, timeout: float = 30) -> None:
    """Every published chunk delivered (none waiting), some held unacked: the segmenter is mid-utterance."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await b.js.consumer_info("TOLK_AUDIO", durable)
        if info.num_pending == 0 and info.num_ack_pending > 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{durable} did not catch up: {info}")


@pytest.mark.parametrize(("endpoint_ms", "cuts", "sessions", "resumes"), [
    (0, 2, 2, 1),  # the server's endpoint: the second kill comes after the first final's checkpoint
    (1500, 1, 3, 0),  # the session's (#35): one utterance, so both kills replay it from its first chunk
])
async def test_killed_mid_utterance_keeps_the_utterance(bus: tuple[Bus, str], tmp_path: Path, endpoint_ms: int,
                                                       cuts: int, sessions: int, resumes: int) -> None:
    """The session's endpointing travels on every chunk: a replay cuts where the uninterrupted session did."""
    b, url = bus
    sid = f"crash-{endpoint_ms}"
    clip = next(c for c in clips("en") if c.name == CLIP)
    pcm, rate = clip.pcm16()
    assert rate == 16000
    audio = decode_pcm(pcm, Encoding.PCM_S16LE)
    p = partition_for(sid, topology.load().partitions)
    durable = f"segmenter-p{p}"
    log = tmp_path / "segmenter.log"

    # What one uninterrupted segmenter cuts (the same VAD, pure): the finals a crash must not change.
    seg = UtteranceSegmenter(DualVad(WebRtcStream(2), SileroModel().stream(0.5), Vote.AND))
    seg.endpointing(endpoint_ms)
    reference = [c for i in range(0, len(audio), CHUNK) for c in seg.push(audio[i:i + CHUNK], 0.0) if c.final]
    reference += [c for c in seg.flush(0.0) if c.final]
    assert len(reference) == cuts

    proc = segmenter(url, log)
    # SIGKILL inside the first utterance (no checkpoint yet), SIGTERM inside the second (after one).
    kills = {int(5.0 * 16000 / CHUNK): signal.SIGKILL, int(9.6 * 16000 / CHUNK): signal.SIGTERM}
    try:
        n = len(pcm) // (2 * CHUNK) + 1
        t0 = time.monotonic()
        for i in range(n):
            data = pcm[i * 2 * CHUNK:(i + 1) * 2 * CHUNK]
            await b.publish_audio(AudioChunk(session_id=sid, chunk_seq=i + 1, sample_rate=16000,
                                             encoding=Encoding.PCM_S16LE, language="en", data=data,
                                             received_at=time.time(), end=i == n - 1, endpoint_ms=endpoint_ms), p)
            if i in kills:
                await consumed(b, durable)
                proc.send_signal(kills[i])
                proc.wait(30)
                proc = segmenter(url, log)  # the audio goes on while it starts
            await asyncio.sleep(max(0.0, t0 + (i + 1) * CHUNK / 16000 / 2 - time.monotonic()))  # 2x real time

        # Act as STT: every final segment of the session, and the END marker.
        sub = await b.js.pull_subscribe_bind(pools.durable("final", pools.load().route("en").name),
                                             stream="TOLK_SEGMENTS")
        finals: list[Segment] = []
        deadline = time.monotonic() + 90
        while len(finals) < cuts and time.monotonic() < deadline:
            try:
                for m in await sub.fetch(10, timeout=1):
                    seg = decode(m.data, Segment)
                    if not seg.speculative:  # a final's audio sent ahead: STT's business, not a final
                        finals.append(seg)
                    await m.ack()
            except TimeoutError:
                pass
        ends = await b.js.subscribe(f"tolk.transcript.{p}.{sid}", ordered_consumer=True)
        markers = [decode((await ends.next_msg(timeout=30)).data, Transcript)]
        try:
            while True:
                markers.append(decode((await ends.next_msg(timeout=2)).data, Transcript))
        except TimeoutError:
            pass
        await ends.unsubscribe()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    text = log.read_text()
    # No checkpoint before the first final: the second segmenter replays the session from its first chunk.
    assert text.count("new session") == sessions and text.count("resuming after final 1") == resumes, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    # Each final once, numbered as without the crashes, covering the same audio.
    assert [f.final_index for f in finals] == list(range(1, cuts + 1)), [(f.final_index, f.seq, f.start, f.end)
                                                                         for f in finals]
    for f, ref in zip(finals, reference, strict=True):
        assert abs(f.start - ref.start) < 0.25 and abs(f.end - ref.end) < 0.25, (f.start, f.end, ref.start, ref.end)
    assert len(markers) == 1, markers
    end = markers[0]
    assert end.kind is ResultKind.END and end.final_index == cuts + 1
    seqs = [f.seq for f in finals] + [end.seq]
    assert seqs == sorted(seqs)
    # The words survive: the replayed finals transcribe like the uninterrupted cuts do.
    engine = WhisperEngine(resolve("tiny.en", "/nonexistent"))
    got = engine.transcribe_batch(
        [SttRequest(np.frombuffer(f.audio, "<i2").astype(np.float32) / 32768, "en") for f in finals])
    hyp = " ".join(r.text for r in got)
    assert corpus_wer([(clip.reference, hyp)]) < 0.15, hyp
    # Nothing left behind: every chunk acked once the session ended.
    info = await b.js.consumer_info("TOLK_AUDIO", durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0, info
