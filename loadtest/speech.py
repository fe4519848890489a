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

    @property
    def genre(self) -> str:
        """`unscripted` (conversation, spontaneous monologue: fillers, restarts) or `read` (everything else)."""
        return "unscripted" if any(k in self.name for k in ("_conversational", "_spontaneous")) else "read"

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


def at_peak(pcm: bytes, dbfs: float | None) -> bytes:
    """int16 samples played with their peak at `dbfs` (a quiet or distant microphone); None: as recorded."""
    if dbfs is None:
        return pcm
    a = np.frombuffer(pcm, "<i2").astype(np.float64)
    gain = 32768 * 10 ** (dbfs / 20) / max(float(np.abs(a).max()), 1.0)
    return np.clip(np.round(a * gain), -32768, 32767).astype("<i2").tobytes()


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
                 target: str | io.BytesIO | None = None, channels: int = 1, **options: str) -> bytes:
    """Compress int16 mono `samples` (or stereo: `channels` 2, interleaved) with PyAV into container `fmt` (as a
    radio encoder or a phone would).

    Written to `target` (a path) when given, else returned as bytes.
    """
    import av

    buf = target if target is not None else io.BytesIO()
    with av.open(buf, "w", format=fmt, options=options) as out:
        stream = out.add_stream(codec, rate=48000 if codec == "libopus" else rate)
        if bitrate:
            stream.bit_rate = bitrate
        layout = "stereo" if channels == 2 else "mono"
        stream.layout = layout  # type: ignore[union-attr]
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:  # type: ignore[union-attr]
            out.mux(packet)
    return buf.getvalue() if isinstance(buf, io.BytesIO) else b""


def squeeze_pauses(samples: np.ndarray, rate: int = 16000, max_pause_ms: float = 150.0,
                   threshold_db: float = -25.0, frame_ms: float = 10.0) -> np.ndarray:
    """The same speech without its pauses: every pause longer than `max_pause_ms` is shortened to it.

    What `ffmpeg -af silenceremove=stop_periods=-1:stop_duration=0.15` does, as an energy gate in numpy
    (ffmpeg need not be installed): 10 ms frames are silent when their RMS is `threshold_db` below the
    loudness of the speech (the 95th percentile frame), or within 6 dB of the recording's noise floor (the
    5th percentile) where that is higher; a run of silent frames longer than `max_pause_ms`
    keeps only its first and last `max_pause_ms / 2`, so words keep their natural onsets and decays.
    Works on int16 or float arrays; returns the same dtype.
    """
    hop = max(1, int(rate * frame_ms / 1000))
    n = len(samples) // hop
    if n == 0:
        return samples.copy()
    x = samples[: n * hop].astype(np.float64).reshape(n, hop)
    rms = np.sqrt(np.mean(x * x, axis=1)) + 1e-12
    loud = float(np.percentile(rms, 95))
    db = 20 * np.log10(rms / loud)
    silent = db < max(threshold_db, float(np.percentile(db, 5)) + 6.0)
    keep = np.ones(len(samples), dtype=bool)
    half = int(max_pause_ms / frame_ms / 2)
    i = 0
    while i < n:
        if not silent[i]:
            i += 1
            continue
        j = i
        while j < n and silent[j]:
            j += 1
        if j - i > 2 * half:
            keep[(i + half) * hop : (j - half) * hop] = False
        i = j
    return samples[keep]
