"""float32 samples in [-1, 1] ↔ int16, at one scale for every actor (segments, VAD frames, uploaded WAV files).

Rounded at 32768, the scale int16 input is divided by, so int16 audio comes back sample for sample. Truncating
at 32767 took one step off every sample's magnitude, a dead zone Whisper hears: through the pipeline the dev
set's multilingual clips read 0.216 with it and 0.195 without (offline Whisper: 0.197; docs/benchmarks.md#accuracy).
"""

from __future__ import annotations

import numpy as np

SCALE = 32768.0


def to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples * SCALE), -32768, 32767).astype("<i2")
