"""PyAV source reading (what ingest and file uploads use) across containers, codecs and transports."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np
import pytest

from actors.runtime.media import SourceChunk, SourceEnded, read_source
from loadtest.speech import clips, encode_audio


@pytest.fixture(scope="module")
def jfk() -> tuple[np.ndarray, int]:
    pcm, rate = next(c for c in clips("en") if c.name.startswith("en_jfk")).pcm16()
    return np.frombuffer(pcm, "<i2"), rate


def write(path: Path, samples: np.ndarray, rate: int, fmt: str, codec: str, **opts: str) -> Path:
    encode_audio(samples, rate, fmt, codec, target=str(path), **opts)
    return path


def read_all(url: str) -> list[SourceChunk]:
    got: list[SourceChunk] = []
    with pytest.raises(SourceEnded):
        read_source(url, got.append, threading.Event(), 0.0, realtime=False)
    return got


FORMATS = [("mp3", "mp3", "libmp3lame"), ("ogg", "ogg", "libopus"), ("aac", "adts", "aac"), ("m4a", "ipod", "aac"),
           ("flac", "flac", "flac"), ("webm", "webm", "libopus")]


@pytest.mark.parametrize(("ext", "fmt", "codec"), FORMATS)
def test_containers_decode_to_16k_pcm_and_mp3(tmp_path: Path, jfk: tuple[np.ndarray, int], ext: str, fmt: str,
                                              codec: str) -> None:
    samples, rate = jfk
    path = write(tmp_path / f"jfk.{ext}", samples, rate, fmt, codec)
    chunks = read_all(str(path))
    seconds = sum(len(c.pcm) for c in chunks) / 32000
    assert abs(seconds - len(samples) / rate) < 0.3, seconds
    assert [c.t for c in chunks] == sorted(c.t for c in chunks)
    assert sum(len(c.mp3) for c in chunks) > 20_000  # relayed audio for listeners
    pcm = np.frombuffer(b"".join(c.pcm for c in chunks), "<i2").astype(np.float32)
    assert np.sqrt(np.mean(pcm**2)) > 100  # speech, not silence


def test_hls_playlist(tmp_path: Path, jfk: tuple[np.ndarray, int]) -> None:
    samples, rate = jfk
    playlist = write(tmp_path / "live.m3u8", samples, rate, "hls", "aac", hls_time="2", hls_list_size="0")
    assert len(list(tmp_path.glob("*.ts"))) >= 3
    chunks = read_all(str(playlist))
    assert abs(sum(len(c.pcm) for c in chunks) / 32000 - len(samples) / rate) < 0.5


def test_not_audio_and_stop(tmp_path: Path, jfk: tuple[np.ndarray, int]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not audio\n" * 100)
    with pytest.raises((av.error.FFmpegError, ValueError)):  # unreadable, or readable with no audio in it
        read_source(str(text), lambda c: None, threading.Event(), 0.0, realtime=False)
    samples, rate = jfk
    path = write(tmp_path / "jfk.mp3", samples, rate, "mp3", "libmp3lame")
    stop = threading.Event()
    got: list[SourceChunk] = []

    def emit(c: SourceChunk) -> None:
        got.append(c)
        if len(got) == 5:
            stop.set()

    t = read_source(str(path), emit, stop, 7.0, realtime=False)  # a stop returns the stream time reached
    assert len(got) == 5 and got[0].t == 7.0 and abs(t - 7.5) < 0.01
