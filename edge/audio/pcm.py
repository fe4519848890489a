"""Raw PCM of the vendors' encodings to 16-bit mono, incrementally (any frame sizes), and the G.711 tables."""

from __future__ import annotations

import numpy as np

MIN_RATE, MAX_RATE = 8000, 48000  # raw PCM a client may send, on every API (files are resampled whatever theirs)
MAX_CHANNELS = 8
ENCODINGS = ("linear16", "linear32", "mulaw", "alaw")


def _mulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign, exponent, mantissa = a & 0x80, (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


MULAW = _mulaw_table()  # G.711 byte -> int16
ALAW = _alaw_table()
_TABLES = {"mulaw": MULAW, "alaw": ALAW}
_WIDTH = {"linear16": 2, "linear32": 4, "mulaw": 1, "alaw": 1}


def mixdown(samples: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved int16 samples of `channels` channels -> mono: the package's one channel policy."""
    if channels == 1:
        return np.asarray(samples, dtype=np.int16)
    mixed: np.ndarray = np.round(samples.reshape(-1, channels).mean(axis=1)).astype(np.int16)
    return mixed


def split_channels(data: bytes, width: int, channels: int) -> list[bytes]:
    """Interleaved frames (`channels` samples of `width` bytes each, whole frames only) -> one byte string per
    channel, the samples as they were: multichannel sessions run a pipeline per channel."""
    frames = np.frombuffer(data, np.uint8).reshape(-1, channels, width)
    return [frames[:, c, :].tobytes() for c in range(channels)]


class PcmDecoder:
    """Bytes in `encoding` with `channels` interleaved → int16 little-endian mono (`keep`: the channels kept,
    interleaved, for a multichannel session); keeps a partial sample."""

    def __init__(self, encoding: str, channels: int, keep: bool = False) -> None:
        self.encoding, self.channels, self.keep = encoding, channels, keep
        self.frame = _WIDTH[encoding] * channels
        self._rest = b""
        self.samples = 0  # per channel, so far

    def feed(self, data: bytes) -> bytes:
        data = self._rest + data
        usable = len(data) - len(data) % self.frame
        self._rest = data[usable:]
        if not usable:
            return b""
        raw = data[:usable]
        if self.encoding == "linear16":
            pcm = np.frombuffer(raw, "<i2")
        elif self.encoding == "linear32":
            pcm = (np.frombuffer(raw, "<i4") >> 16).astype(np.int16)
        else:
            pcm = _TABLES[self.encoding][np.frombuffer(raw, np.uint8)]
        if not self.keep:
            pcm = mixdown(pcm, self.channels)
        self.samples += len(pcm) // (self.channels if self.keep else 1)
        return pcm.astype("<i2").tobytes()
