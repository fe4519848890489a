"""Resemblyzer's GE2E voice encoder (Apache-2.0; weights from its PyPI wheel), run without its package's imports.

The network (3-layer LSTM over 40 log-free mel bands, 1.6 s partials averaged) and feature extraction follow
resemblyzer 0.1.4's `VoiceEncoder` and `wav_to_mel_spectrogram` exactly; the mel filterbank is computed here in
numpy (Slaney scale and norm, as librosa's default), so the diarizer needs neither librosa (numba) nor the
source build of webrtcvad that resemblyzer's package metadata pulls in (it would overwrite webrtcvad-wheels,
which the segmenter uses). Only its `pretrained.pt` is read.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from actors.diarizer.interface import SAMPLE_RATE

N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s: the partial utterance the encoder was trained on
TARGET_DBFS = -30.0


def weights_path(folder: str = "") -> Path:
    """`pretrained.pt` in `folder`, or in the installed resemblyzer wheel (found without importing it)."""
    if folder:
        path = Path(folder)
        return path / "pretrained.pt" if path.is_dir() else path
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("resemblyzer is not installed (make install): its wheel ships the GE2E weights")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    mel = f / f_sp
    high = f >= min_log_hz
    mel[high] = min_log_hz / f_sp + np.log(f[high] / min_log_hz) / logstep
    return mel


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    f = m * f_sp
    high = m >= min_log_mel
    f[high] = min_log_hz * np.exp(logstep * (m[high] - min_log_mel))
    return f


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40): Slaney mel scale, Slaney area norm."""
    fft_f = np.linspace(0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([SAMPLE_RATE / 2]))[0],
                                   N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_f[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann


def mel_frames(wav: np.ndarray) -> np.ndarray:
    """(frames, 40) power mel spectrogram, centred frames with zero padding (librosa.feature.melspectrogram)."""
    padded = np.pad(wav.astype(np.float32), N_FFT // 2)
    n = 1 + (len(padded) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(padded[idx] * _WINDOW, axis=1)) ** 2
    mel: np.ndarray = spec.astype(np.float32) @ mel_filters().T
    return mel.astype(np.float32)


def normalize_volume(wav: np.ndarray) -> np.ndarray:
    """Quiet audio raised to -30 dBFS RMS (never lowered), as resemblyzer's preprocess_wav."""
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if len(wav) else 0.0
    if rms <= 0:
        return wav
    change = TARGET_DBFS - 20 * np.log10(rms)
    return wav * np.float32(10 ** (change / 20)) if change > 0 else wav


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        raw = self.relu(self.linear(hidden[-1]))
        out: torch.Tensor = raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-9)
        return out


class Ge2eEncoder:
    """SpeakerEncoder over resemblyzer's weights; one torch thread (the actor's executor bounds concurrency)."""

    name = "ge2e"
    dim = 256

    def __init__(self, folder: str = "", threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.net = _Net()
        state = torch.load(weights_path(folder), map_location="cpu", weights_only=True)
        state = state.get("model_state", state)
        self.net.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")})  # training only
        self.net.eval()

    def _partials(self, mel: np.ndarray, starts: list[int]) -> np.ndarray:
        batch = np.stack([mel[s:s + PARTIAL_FRAMES] for s in starts])
        with torch.inference_mode():
            out: np.ndarray = self.net(torch.from_numpy(batch)).numpy()
        return out

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """resemblyzer's embed_utterance: 1.6 s partials at rate 1.3 (~50 % overlap), averaged, renormalised."""
        mel = mel_frames(normalize_volume(audio))
        step = max(1, round(SAMPLE_RATE / 1.3 / HOP))
        if len(mel) < PARTIAL_FRAMES:
            mel = np.pad(mel, ((0, PARTIAL_FRAMES - len(mel)), (0, 0)))
        starts = list(range(0, len(mel) - PARTIAL_FRAMES + 1, step))
        last = starts[-1] + PARTIAL_FRAMES
        if last < len(mel) and (len(mel) - last) / PARTIAL_FRAMES >= 0.25:  # uncovered tail: one more partial
            mel = np.pad(mel, ((0, starts[-1] + step + PARTIAL_FRAMES - len(mel)), (0, 0)))
            starts.append(starts[-1] + step)
        raw = self._partials(mel, starts).mean(axis=0)
        unit: np.ndarray = raw / max(float(np.linalg.norm(raw)), 1e-9)
        return unit.astype(np.float32)

    def embed_windows(self, audio: np.ndarray, window_s: float, step_s: float) -> tuple[np.ndarray, np.ndarray]:
        """One embedding per `window_s` window every `step_s` (the encoder sees 1.6 s of it, padded if shorter)."""
        mel = mel_frames(normalize_volume(audio))
        win, step = max(1, round(window_s * 100)), max(1, round(step_s * 100))
        if len(mel) < win:
            return np.zeros(0, np.float32), np.zeros((0, self.dim), np.float32)
        frames = [mel[s:s + win] for s in range(0, len(mel) - win + 1, step)]
        batch = np.stack([np.pad(f, ((0, max(0, PARTIAL_FRAMES - len(f))), (0, 0)))[:PARTIAL_FRAMES]
                          if len(f) < PARTIAL_FRAMES else f for f in frames])
        with torch.inference_mode():
            embs = self.net(torch.from_numpy(batch)).numpy()
        starts = np.arange(len(frames), dtype=np.float32) * step / 100
        return starts, embs.astype(np.float32)
