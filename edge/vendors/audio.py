"""Raw audio of the vendors' encodings to 16-bit mono PCM, incrementally (any frame sizes)."""

from __future__ import annotations

import struct

import numpy as np

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


_TABLES = {"mulaw": _mulaw_table(), "alaw": _alaw_table()}
_WIDTH = {"linear16": 2, "linear32": 4, "mulaw": 1, "alaw": 1}


class PcmDecoder:
    """Bytes in `encoding` with `channels` interleaved → int16 little-endian mono; keeps a partial sample."""

    def __init__(self, encoding: str, channels: int) -> None:
        self.encoding, self.channels = encoding, channels
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
        if self.channels > 1:
            pcm = np.round(pcm.reshape(-1, self.channels).mean(axis=1)).astype(np.int16)
        self.samples += len(pcm)
        return pcm.astype("<i2").tobytes()


def wav_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(sample rate, channels, bits per sample, offset of the samples) of a PCM WAV's first bytes, or None."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"fmt " and pos + 24 <= len(data):
            tag, channels, rate = struct.unpack("<HHI", data[pos + 8:pos + 16])
            bits = struct.unpack("<H", data[pos + 22:pos + 24])[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None or fmt[0] not in (1, 0xFFFE):
                return None
            return fmt[2], fmt[1], fmt[3], pos + 8
        pos += 8 + size + (size & 1)
    return None
