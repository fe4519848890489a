"""The client library (tolk_client) and `tolk listen` against a real `tolk up`: a live session that resumes
after a network cut with nothing lost or doubled, file upload with server-sent events, exports, the sync API,
and the CLI printing partials then finals and writing a valid SRT. (Channels: tests/test_channels.py.)"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest
import tolk_client
import webvtt
from tolk_client import files
from tolk_client.results import Kind, TolkError

from loadtest.speech import Clip, clips
from loadtest.wer import corpus_wer
from tests.conftest import Proxy, Running

pytestmark = pytest.mark.e2e
on_loop = pytest.mark.asyncio(loop_scope="session")
TOLK = str(Path(sys.executable).parent / "tolk")


def jfk() -> Clip:
    return next(c for c in clips("en") if c.name.startswith("en_jfk"))


def wav(path: Path, pcm: bytes, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


async def stream(session: tolk_client.LiveSession, pcm: bytes, cut_at: float | None = None,
                 proxy: Proxy | None = None) -> list[tolk_client.Result]:
    """Sends `pcm` in 100 ms chunks at real-time pace (cutting the network at `cut_at` s), then collects."""
    step = 3200

    async def feed() -> None:
        for i, off in enumerate(range(0, len(pcm), step)):
            if cut_at is not None and proxy is not None and i == int(cut_at * 10):
                assert proxy.cut() >= 2  # the client's socket and the edge's
            await session.send(pcm[off : off + step])
            await asyncio.sleep(0.1)
        await session.stop()

    feeder = asyncio.create_task(feed())
    out = [r async for r in session]
    await feeder
    return out


@on_loop
async def test_live_session_resumes_after_a_cut_and_loses_nothing(tolk: Running) -> None:
    clip = jfk()
    pcm, rate = clip.pcm16()
    pcm += bytes(rate * 2)  # a second of silence: the last utterance ends on a pause
    proxy = Proxy(int(tolk.http.rsplit(":", 1)[1]))
    await proxy.start()
    try:
        async with tolk_client.connect(proxy.url, language="en") as s:
            results = await stream(s, pcm, cut_at=5.0, proxy=proxy)
        assert s.resumes == 1 and s.done
        seqs = [r.seq for r in results]
        assert seqs == sorted(set(seqs)), seqs  # nothing twice, nothing going back
        finals = [r for r in results if r.kind is Kind.FINAL]
        assert all(isinstance(w, tolk_client.Word) for r in finals for w in r.words)
        said = " ".join(r.text for r in finals if r.text)
        # Audio on the wire at the cut can be lost (TCP buffers die with the connection); what was said while
        # disconnected is kept and sent after the resume.
        assert corpus_wer([(clip.reference, said)]) <= 0.2, said
        # The server stored the same finals: export them as the owner.
        srt = await files.export(tolk.http, s.session_id, "srt")
        exported = " ".join(c.text for c in webvtt.from_buffer(srt.splitlines(keepends=True), format="srt"))
        assert exported.split() == said.split()
    finally:
        await proxy.close()


@on_loop
async def test_refused_session_raises_a_tolk_error(tolk: Running) -> None:
    with pytest.raises(TolkError) as info:
        async with tolk_client.connect(tolk.http, language="klingon"):
            pass
    assert info.value.code == "unsupported_language"
    with pytest.raises(TolkError) as missing:
        await files.export(tolk.http, "no-such-session", "vtt")
    assert (missing.value.code, missing.value.status) == ("not_found", 404)


@on_loop
async def test_file_upload_streams_results_then_the_transcript(tolk: Running, tmp_path: Path) -> None:
    clip = jfk()
    pcm, rate = clip.pcm16()
    path = wav(tmp_path / "jfk.wav", pcm, rate)
    events = [e async for e in files.stream(tolk.http, path, language="en")]
    *results, done = events
    assert isinstance(done, files.FileDone) and done.body["text"]
    assert results and all(isinstance(r, tolk_client.Result) for r in results)
    assert any(r.kind is Kind.FINAL for r in results)
    assert corpus_wer([(clip.reference, done.body["text"])]) < 0.15
    srt = await files.transcribe(tolk.http, path, language="en", response_format="srt")
    assert isinstance(srt, str) and " --> " in srt


def test_sync_api(tolk: Running) -> None:
    pcm, _ = jfk().pcm16()
    with tolk_client.sync.connect(tolk.http, language="en") as s:
        for off in range(0, len(pcm), 32000):  # as fast as it goes: 1 s chunks
            s.send(pcm[off : off + 32000])
        s.stop()
        finals = [r for r in s.results(timeout=120) if r.is_final and r.text]
    assert finals and corpus_wer([(jfk().reference, " ".join(r.text for r in finals))]) < 0.15


def test_tolk_listen_file_prints_partials_then_finals_and_writes_srt(tolk: Running, tmp_path: Path) -> None:
    clip = jfk()
    pcm, rate = clip.pcm16()
    path = wav(tmp_path / "talk.wav", pcm + bytes(rate * 2), rate)
    out = subprocess.run([TOLK, "listen", "--url", tolk.http, "--file", str(path), "--language", "en",
                          "--targets", "pt", "--pace", "2", "--output", str(tmp_path / "out.srt")],
                         capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    partials = [i for i, line in enumerate(lines) if line.startswith("… ")]  # not a terminal: one line each
    translated = [line for line in lines if line.startswith("  [pt] ")]  # under their finals
    finals = [line for line in lines if not line.startswith(("… ", "  ["))]
    assert partials and finals and partials[0] < len(lines) - 1, out.stdout
    assert translated and all(len(t) > len("  [pt] ") for t in translated), out.stdout
    cues = webvtt.from_srt(str(tmp_path / "out.srt"))
    assert len(cues) == len(finals)
    assert [c.text for c in cues] == finals
    assert corpus_wer([(clip.reference, " ".join(finals))]) < 0.15
    bad = subprocess.run([TOLK, "listen", "--url", tolk.http, "--file", str(tmp_path / "missing.wav")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("tolk listen:") and "Traceback" not in bad.stderr


def test_tolk_listen_captures_system_audio(tolk: Running, pulse: dict[str, str], tmp_path: Path) -> None:
    """A real clip played into the null sink is captured from its monitor (`--system-audio`) and captioned;
    Ctrl-C ends the audio, and what was said is still finalized before it exits."""
    clip = jfk()
    listen = subprocess.Popen([TOLK, "listen", "--url", tolk.http, "--system-audio", "--language", "en",
                               "--output", str(tmp_path / "live.srt")],
                              env=pulse, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # connected and capturing
        subprocess.run(["paplay", "--device=tolk_test", str(clip.path)], env=pulse, check=True, timeout=60)
        time.sleep(2)
        listen.send_signal(signal.SIGINT)
        out, err = listen.communicate(timeout=60)
    finally:
        listen.kill()
    assert listen.returncode == 0, err
    finals = [line for line in out.splitlines() if not line.startswith("… ")]
    assert corpus_wer([(clip.reference, " ".join(finals))]) <= 0.15, out
    assert [c.text for c in webvtt.from_srt(str(tmp_path / "live.srt"))] == finals
