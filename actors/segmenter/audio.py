"""Client PCM → 16 kHz float32, streaming (the resampler keeps filter state across chunks)."""

from __future__ import annotations

import numpy as np
import soxr

from actors.runtime.pcm import SCALE, to_int16
from schemas import Encoding

TARGET_RATE = 16000


def decode_pcm(data: bytes, encoding: Encoding) -> np.ndarray:
    if encoding is Encoding.PCM_S16LE:
        usable = len(data) - len(data) % 2
        return np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / SCALE
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


def to_int16_bytes(samples: np.ndarray) -> bytes:
    return to_int16(samples).tobytes()
