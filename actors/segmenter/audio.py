"""Client PCM → 16 kHz float32, streaming (the resampler keeps filter state across chunks)."""

from __future__ import annotations

import numpy as np
import soxr

from schemas import Encoding

TARGET_RATE = 16000


def decode_pcm(data: bytes, encoding: Encoding) -> np.ndarray:
    if encoding is Encoding.PCM_S16LE:
        usable = len(data) - len(data) % 2
        return np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
    usable = len(data) - len(data) % 4
    samples = np.frombuffer(data[:usable], dtype="<f4").astype(np.float32)
    return np.nan_to_num(np.clip(samples, -1.0, 1.0), nan=0.0)


class Resampler:
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._stream = None if rate == TARGET_RATE else soxr.ResampleStream(rate, TARGET_RATE, 1, dtype="float32")

    def push(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples
        return np.asarray(self._stream.resample_chunk(samples, last=last), dtype=np.float32)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """The inverse of decode_pcm: int16 input comes back sample for sample.

    Rounded at the scale decode_pcm divides by. Truncating at 32767 took one step off every sample's magnitude,
    a dead zone Whisper hears: through the pipeline the dev set's multilingual clips read 0.216 with it and 0.195
    without (offline Whisper: 0.197; README "Accuracy").
    """
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")


def to_int16_bytes(samples: np.ndarray) -> bytes:
    return to_int16(samples).tobytes()
