"""The shared real-speech corpus (../shared/data/speech): clips with human reference transcripts."""

from __future__ import annotations

import csv
import io
import os
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech"


def speech_dir() -> Path:
    return Path(os.environ.get("TOLK_SPEECH_DIR", DEFAULT_DIR))


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    seconds: float
    language: str
    reference: str

    def pcm16(self) -> tuple[bytes, int]:
        """Raw little-endian int16 mono samples and the sample rate (first channel if stereo)."""
        with wave.open(str(self.path)) as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            frames = w.readframes(w.getnframes())
        if width != 2:
            raise ValueError(f"{self.path}: expected 16-bit PCM")
        if channels > 1:
            frames = np.frombuffer(frames, "<i2").reshape(-1, channels)[:, 0].tobytes()
        return frames, rate


def clips(language: str | None = None) -> list[Clip]:
    root = speech_dir()
    with open(root / "manifest.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    out = [
        Clip(r["file"], root / r["file"], float(r["seconds"]), r["language"], r["reference_text"])
        for r in rows
    ]
    return [c for c in out if language is None or c.language == language]


def encode_audio(samples: np.ndarray, rate: int, fmt: str, codec: str, bitrate: int | None = None,
                 target: str | io.BytesIO | None = None, **options: str) -> bytes:
    """Compress int16 mono `samples` with PyAV into container `fmt` (as a radio encoder or a phone would).

    Written to `target` (a path) when given, else returned as bytes.
    """
    import av

    buf = target if target is not None else io.BytesIO()
    with av.open(buf, "w", format=fmt, options=options) as out:
        stream = out.add_stream(codec, rate=48000 if codec == "libopus" else rate)
        if bitrate:
            stream.bit_rate = bitrate
        stream.layout = "mono"  # type: ignore[union-attr]
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:  # type: ignore[union-attr]
            out.mux(packet)
    return buf.getvalue() if isinstance(buf, io.BytesIO) else b""
