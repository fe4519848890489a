"""Audio that is not speech, for checking that Tolk writes no words where nobody speaks.

- silence: digital zero;
- white noise, at a level in dBFS (RMS);
- room tone: recorded. The stretches of the dev recordings (../shared/data/speech; licences in its manifest)
  that are well away from any speech and above digital silence, joined with short cross-fades: the hiss, hum and
  air of real microphones in real rooms;
- music: recorded, GPL-2+ (Debian's `asc-music`: three produced tracks by Michael Kievernagel, MP3), decoded
  by PyAV.

Levels are set in LUFS (ITU-R BS.1770, pyloudnorm) as broadcast loudness is measured.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from loadtest.speech import clips

RATE = 16000
MUSIC_DIR = Path("/usr/share/games/asc/music")  # `apt-get install asc-music` (Debian, GPL-2+)
FRAME = 480  # 30 ms


def lufs(samples: np.ndarray, rate: int = RATE) -> float:
    """Integrated loudness of float samples in [-1, 1]."""
    import pyloudnorm

    return float(pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64)))


def at_lufs(samples: np.ndarray, target: float) -> np.ndarray:
    """`samples` (float) scaled to `target` LUFS, clipped to [-1, 1]."""
    gain = 10 ** ((target - lufs(samples)) / 20)
    return np.clip(samples * gain, -1.0, 1.0)


def to_pcm16(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def white(seconds: float, dbfs: float, seed: int = 7) -> np.ndarray:
    """Gaussian white noise with its RMS at `dbfs`."""
    return np.random.default_rng(seed).normal(0, 10 ** (dbfs / 20), int(seconds * RATE)).astype(np.float32)


def _quiet_runs(x: np.ndarray, margin_frames: int = 15, min_frames: int = 8) -> list[np.ndarray]:
    """Runs of 30 ms frames at least `margin_frames` away from any frame 12 dB over the recording's floor."""
    n = len(x) // FRAME
    energy = 10 * np.log10(np.mean(x[: n * FRAME].reshape(n, FRAME) ** 2, axis=1) + 1e-12)
    floor = float(np.percentile(energy, 10))
    if floor < -70:  # digital silence with dither: not a room
        return []
    quiet = np.ones(n, bool)
    for i in np.flatnonzero(energy > floor + 12):
        quiet[max(0, i - margin_frames): i + margin_frames + 1] = False
    runs, start = [], None
    for i, q in enumerate([*quiet, False]):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if i - start >= min_frames:
                runs.append(x[start * FRAME: i * FRAME])
            start = None
    return runs


@cache
def _room_pieces() -> tuple[np.ndarray, ...]:
    pieces = []
    for c in clips():
        pcm, rate = c.pcm16()
        if rate != RATE:
            continue
        pieces += _quiet_runs(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768)
    if not pieces:
        raise SystemExit("no room tone found in the dev recordings")
    # Each piece at one level, so the joined tone does not pump from room to room.
    return tuple(p / max(float(np.sqrt(np.mean(p ** 2))), 1e-6) for p in pieces)


def room_tone(seconds: float) -> np.ndarray:
    """Recorded room tone, `seconds` long (RMS 1 before levelling: use `at_lufs`)."""
    fade = 320  # 20 ms cross-fades
    ramp = np.linspace(0, 1, fade, dtype=np.float32)
    out = np.zeros(0, np.float32)
    pieces = _room_pieces()
    i = 0
    while len(out) < seconds * RATE:
        p = pieces[i % len(pieces)].astype(np.float32)
        i += 1
        if len(out) >= fade and len(p) > 2 * fade:
            out[-fade:] = out[-fade:] * (1 - ramp) + p[:fade] * ramp
            p = p[fade:]
        out = np.concatenate([out, p])
    return out[: int(seconds * RATE)]


def music(seconds: float, offset_s: float = 30.0, track: str = "frontiers.mp3") -> np.ndarray:
    """`seconds` of a recorded music track from `offset_s`, mono, 16 kHz."""
    import av

    path = MUSIC_DIR / track
    if not path.exists():
        raise SystemExit(f"{path} is missing: apt-get install asc-music (Debian's package of GPL-2+ music)")
    chunks = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        for frame in container.decode(audio=0):
            for f in resampler.resample(frame):
                chunks.append(f.to_ndarray().reshape(-1))
            if sum(len(c) for c in chunks) >= (offset_s + seconds) * RATE:
                break
    x = np.concatenate(chunks)[int(offset_s * RATE): int((offset_s + seconds) * RATE)]
    return x.astype(np.float32)
