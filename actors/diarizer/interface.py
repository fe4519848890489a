"""The narrow interface between the diarizer actor and its speaker-embedding engines.

An engine turns 16 kHz mono float32 audio into unit-length voice embeddings: one for a whole utterance and one
per sliding window, which is where a change of voice inside an utterance shows. Clustering
(`actors.diarizer.clusters`) only ever sees these vectors, so any engine (GE2E, WeSpeaker, pyannote) fits.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

SAMPLE_RATE = 16000


class SpeakerEncoder(Protocol):
    name: str  # e.g. "ge2e" (heartbeat info, logs)
    dim: int  # embedding size

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """One unit-length embedding (float32, `dim`) of all of `audio`."""
        ...

    def embed_windows(self, audio: np.ndarray, window_s: float, step_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Window start times (seconds into `audio`) and one unit-length embedding per window (rows)."""
        ...
