"""VAD engines behind one narrow interface, and the dual-VAD vote that combines them.

Silero runs as the package's bundled ONNX model with the recurrent state held per stream, so one
loaded model serves every session (the JIT model keeps state inside the module instead).
"""

from __future__ import annotations

import enum
import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np
import webrtcvad

from actors.segmenter.audio import to_int16_bytes

SAMPLE_RATE = 16000
FRAME = 512  # 32 ms: Silero's native window at 16 kHz
_WEBRTC_SAMPLES = 480  # webrtcvad takes 10/20/30 ms frames: judge the first 30 ms of each window
_SILERO_CONTEXT = 64
SILERO_SURE = 0.9  # DualVad: Silero this sure is speech whatever webrtcvad says (TOLK_VAD_SILERO_SURE)


class VadStream(Protocol):
    """Per-session detector; `frame` is FRAME float32 samples in [-1, 1]."""

    def speech(self, frame: np.ndarray, active: bool) -> bool: ...

    def reset(self) -> None:
        """Forget recurrent context (called after a long pause)."""


class Vote(enum.StrEnum):
    AND = "and"  # both must hear speech (rejects noise; may clip soft onsets)
    OR = "or"  # either hears speech
    SILERO = "silero"
    WEBRTC = "webrtc"
    # Start on AND (both agree it is speech), continue on OR (either still hears it): noise does not
    # open an utterance, and a soft word-final does not end one.
    HYSTERESIS = "hysteresis"


class PeakGain:
    """Slow automatic gain: webrtcvad is level-sensitive and misses quietly recorded speech.

    Tracks a decaying peak and scales towards `target`, never above `max_gain` (so digital silence
    and a faint noise floor stay quiet). Only the VAD input is scaled; STT gets the original audio.
    Silero hears level too: speech peaking under about -50 dBFS (a distant or quietly set microphone)
    reads as silence to it, and whole utterances are lost.
    """

    def __init__(self, target: float = 0.25, max_gain: float = 100.0, decay: float = 0.998) -> None:
        self.target = target
        self.max_gain = max_gain
        self.decay = decay  # per 32 ms frame: the peak memory halves in ~11 s
        self.level = 0.0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        self.level = max(self.level * self.decay, float(np.max(np.abs(frame))) if len(frame) else 0.0)
        gain = min(self.max_gain, self.target / max(self.level, 1e-9))
        return frame * gain if gain > 1.0 else frame


class WebRtcStream:
    def __init__(self, aggressiveness: int) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)

    def speech(self, frame: np.ndarray, active: bool) -> bool:
        pcm = to_int16_bytes(frame[:_WEBRTC_SAMPLES])
        return bool(self._vad.is_speech(pcm, SAMPLE_RATE))

    def reset(self) -> None:
        pass  # stateless per frame


class SileroModel:
    """The loaded ONNX session, shared; `stream()` gives a detector with its own state."""

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(path or bundled_silero_path()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def probability(self, frame: np.ndarray, state: np.ndarray, context: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.concatenate([context, frame]).astype(np.float32)[None, :]
        out, new_state = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
        return float(out[0, 0]), new_state

    def stream(self, threshold: float) -> SileroStream:
        return SileroStream(self, threshold)


class SileroStream:
    def __init__(self, model: SileroModel, threshold: float) -> None:
        self._model = model
        self._threshold = threshold
        # Silero's own hysteresis: once in speech, stay until the probability drops 0.15 lower.
        self._continue = max(0.01, threshold - 0.15)
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_SILERO_CONTEXT, dtype=np.float32)
        self.last_probability = 0.0

    def speech(self, frame: np.ndarray, active: bool) -> bool:
        prob, self._state = self._model.probability(frame, self._state, self._context)
        self._context = frame[-_SILERO_CONTEXT:].astype(np.float32)
        self.last_probability = prob
        return prob >= (self._continue if active else self._threshold)

    def reset(self) -> None:
        # Silero's state carries the level of earlier audio: after a loud speaker it misses a quiet one
        # (measured: 22% of speech frames found instead of 86%). A pause is a safe point to forget.
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_SILERO_CONTEXT, dtype=np.float32)


class DualVad:
    """Both detectors always run (so each keeps its state); the vote decides. With `gain` (TOLK_VAD_GAIN) both
    hear the frame through one slow peak gain.

    `sure` (TOLK_VAD_SILERO_SURE): a frame Silero is this sure of is speech whatever webrtcvad says, under the
    votes that need both. webrtcvad reads band energies and misses hoarse or breathy voices that Silero hears at
    0.95+ (a speaker with a cold: "hopefully the recording levels" lost between two finals), while the noise and
    music it is there to veto do not make Silero that sure (docs/benchmarks.md#unscripted-speech). Above 1: off."""

    def __init__(self, webrtc: VadStream, silero: SileroStream, vote: Vote, gain: bool = True,
                 sure: float = SILERO_SURE) -> None:
        self._webrtc = webrtc
        self._silero = silero
        self._vote = vote
        self._gain = PeakGain() if gain else None
        self._sure = sure

    def speech(self, frame: np.ndarray, active: bool) -> bool:
        if self._gain is not None:
            frame = self._gain(frame)
        w = self._webrtc.speech(frame, active)
        s = self._silero.speech(frame, active)
        if not w and s and self._vote in (Vote.AND, Vote.HYSTERESIS) and self._certain():
            return True
        match self._vote:
            case Vote.AND:
                return w and s
            case Vote.OR:
                return w or s
            case Vote.SILERO:
                return s
            case Vote.WEBRTC:
                return w
            case Vote.HYSTERESIS:
                return (w or s) if active else (w and s)

    def _certain(self) -> bool:
        return self._silero.last_probability >= self._sure

    def reset(self) -> None:
        self._webrtc.reset()
        self._silero.reset()


def bundled_silero_path() -> Path:
    """The ONNX file shipped in the silero-vad wheel, found without importing the package (torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.exists():
        raise RuntimeError(f"silero-vad model missing at {path}")
    return path
