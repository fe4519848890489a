"""Reading media with PyAV: any container/codec FFmpeg knows, from a URL (live) or a file (uploads).

Blocking by nature (FFmpeg's I/O), so callers run it on a thread. It yields 100 ms chunks of 16 kHz
mono s16le PCM for the recognizer and, for live channels, MP3 for listeners (one codec whatever the
source is, so a page plays every channel the same way), both stamped with the pipeline's stream clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np

RATE = 16000
CHUNK_SAMPLES = RATE // 10  # 100 ms
MAX_BAD_PACKETS = 50  # consecutive undecodable packets before the source counts as failed


@dataclass(frozen=True)
class SourceChunk:
    pcm: bytes  # s16le mono 16 kHz
    t: float  # stream seconds of the first sample
    mp3: bytes  # MP3 frames encoded since the previous chunk (may be empty)


class SourceEnded(Exception):
    """The source closed (end of file, or a live stream that dropped)."""


def read_source(
    url: str,
    emit: Callable[[SourceChunk], None],
    stop: threading.Event,
    t0: float,
    open_timeout_s: float = 10.0,
    read_timeout_s: float = 10.0,
    realtime: bool = True,
    mp3_bitrate: int = 48000,
    mp3: bool = True,
    chunk_samples: int = CHUNK_SAMPLES,
) -> float:
    """Decode `url` from stream time `t0` until it ends (raises SourceEnded) or `stop` is set.

    Returns the stream time reached. Paces output to the wall clock when `realtime` (a file would
    otherwise be read at decode speed; a live stream already arrives at real-time pace).
    """
    container = av.open(url, mode="r", timeout=(open_timeout_s, read_timeout_s))
    try:
        audio = next((s for s in container.streams if s.type == "audio"), None)
        if audio is None:
            raise ValueError(f"{url}: no audio stream")
        resampler = av.AudioResampler(format="s16p", layout="mono", rate=RATE)
        encoder = None
        if mp3:
            encoder = av.CodecContext.create("libmp3lame", "w")
            encoder.sample_rate = RATE
            encoder.layout = "mono"
            encoder.format = "s16p"
            encoder.bit_rate = mp3_bitrate
            encoder.open()
        pending = np.zeros(0, np.int16)
        encoded = bytearray()
        t = t0
        began = time.monotonic() - t0
        bad = 0
        for packet in container.demux(audio):
            if stop.is_set():
                return t
            try:
                frames = packet.decode()
                bad = 0
            except av.error.InvalidDataError:
                # A damaged packet (a live stream's glitch, a concatenation seam): skip it, as players
                # do; a source that yields nothing but garbage still fails.
                bad += 1
                if bad > MAX_BAD_PACKETS:
                    raise
                continue
            for frame in frames:
                assert isinstance(frame, av.AudioFrame)
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                    if encoder is not None:
                        out.pts = None
                        for p in encoder.encode(out):
                            encoded += bytes(p)
                    pending = np.concatenate([pending, samples])
            while len(pending) >= chunk_samples:
                chunk, pending = pending[:chunk_samples], pending[chunk_samples:]
                if realtime:
                    delay = began + t - time.monotonic()
                    if delay > 0:
                        if stop.wait(delay):
                            return t
                emit(SourceChunk(chunk.tobytes(), round(t, 3), bytes(encoded)))
                encoded.clear()
                t += chunk_samples / RATE
        if len(pending) and not realtime:  # a file's tail shorter than a chunk
            emit(SourceChunk(pending.tobytes(), round(t, 3), bytes(encoded)))
            t += len(pending) / RATE
        raise SourceEnded(f"{url}: source ended at {t:.1f} s")
    finally:
        container.close()
