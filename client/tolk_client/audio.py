"""Audio sources for `tolk listen`: a file (any format FFmpeg decodes, via PyAV) or an input device
(`sounddevice`, optional: `pip install 'tolk[desktop]'`, and PortAudio from the OS), as 16 kHz mono int16."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

RATE = 16000
CHUNK_S = 0.1


def decode_file(path: str | Path, channels: int = 1) -> bytes:
    """The whole file as 16 kHz s16le: mono (mixed down), or with `channels` > 1 the file's channels interleaved
    (ValueError when it has another count)."""
    import av

    out = bytearray()
    with av.open(str(path)) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise ValueError(f"{path}: no audio stream")
        resampler: av.AudioResampler | None = None
        for frame in container.decode(stream):
            assert isinstance(frame, av.AudioFrame)  # decoding an audio stream
            if resampler is None:
                has = len(frame.layout.channels)
                if channels > 1 and has != channels:
                    raise ValueError(f"{path} has {has} channel{'s' if has != 1 else ''}, not {channels}")
                resampler = av.AudioResampler(format="s16", layout="mono" if channels == 1 else frame.layout,
                                              rate=RATE)
            for f in resampler.resample(frame):
                out += f.to_ndarray().tobytes()
        for f in resampler.resample(None) if resampler else ():
            out += f.to_ndarray().tobytes()
    return bytes(out)


async def file_chunks(path: str | Path, pace: float = 1.0, channels: int = 1) -> AsyncIterator[bytes]:
    """The file in 100 ms chunks at `pace` × real time (1: like a microphone); `channels` as in decode_file."""
    pcm = await asyncio.to_thread(decode_file, path, channels)
    step = int(RATE * CHUNK_S) * 2 * channels
    t0 = time.monotonic()
    for i, off in enumerate(range(0, len(pcm), step)):
        if pace > 0:
            delay = t0 + i * CHUNK_S / pace - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield pcm[off : off + step]


def _sounddevice() -> Any:
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: the module is there but PortAudio is not
        raise SystemExit(f"microphone capture needs `pip install 'tolk[desktop]'` and PortAudio "
                         f"(Debian: apt install libportaudio2): {exc}") from None
    return sounddevice


def monitor_sources() -> list[str]:
    """PulseAudio/PipeWire monitor sources (what the computer plays), via `pactl`."""
    if not shutil.which("pactl"):
        return []
    out = subprocess.run(["pactl", "list", "short", "sources"], capture_output=True, text=True, check=False).stdout
    names = [line.split("\t")[1] for line in out.splitlines() if line.count("\t") >= 1]
    return [n for n in names if n.endswith(".monitor")]


def default_monitor() -> str:
    """The monitor of the default output: system audio."""
    if shutil.which("pactl"):
        sink = subprocess.run(["pactl", "get-default-sink"], capture_output=True, text=True, check=False).stdout.strip()
        if sink:
            return f"{sink}.monitor"
    sources = monitor_sources()
    if not sources:
        raise SystemExit("no system-audio monitor source found (PulseAudio/PipeWire with pactl needed)")
    return sources[0]


def devices() -> list[dict[str, Any]]:
    """Input devices (index, name, channels, default rate), then system-audio monitors (index None)."""
    sd = _sounddevice()
    out = [{"index": i, "name": d["name"], "channels": d["max_input_channels"], "rate": d["default_samplerate"]}
           for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]
    out += [{"index": None, "name": m, "channels": 2, "rate": 48000, "monitor": True} for m in monitor_sources()]
    return out


async def device_chunks(device: int | str | None = None, system_audio: bool = False,
                        channels: int = 1) -> AsyncIterator[bytes]:
    """Live capture in 100 ms chunks (`channels` interleaved). `system_audio`: the default output's monitor,
    through PulseAudio's PortAudio device with PULSE_SOURCE pointing at the monitor (how PortAudio reaches a
    Pulse source)."""
    sd = _sounddevice()
    if system_audio or (isinstance(device, str) and device.endswith(".monitor")):
        os.environ["PULSE_SOURCE"] = device if isinstance(device, str) else default_monitor()
        device = "pulse"
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100)  # 10 s; a stalled consumer loses the oldest

    def put(data: bytes) -> None:
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(data)

    def callback(indata: Any, frames: int, t: Any, status: Any) -> None:
        loop.call_soon_threadsafe(put, bytes(indata))

    stream = sd.RawInputStream(samplerate=RATE, channels=channels, dtype="int16", blocksize=int(RATE * CHUNK_S),
                               device=device, callback=callback)
    with stream:
        while True:
            yield await queue.get()
