"""Compressed microphone audio on Tolk's own protocol: a clip as Opus in Ogg or WebM (what `MediaRecorder` makes),
streamed at real-time pace in ~100 ms pieces, and what a session uploads per second each way.

    python -m loadtest.compressed [--url ws://127.0.0.1:8080/v1/listen] [--clip en_jfk] [--pace 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from loadtest.client import SessionRun, stream_pcm
from loadtest.speech import Clip, clips, encode_audio
from loadtest.wer import corpus_wer

BITRATE = 32000  # what the browser page asks MediaRecorder for (edge/static/js/mic.js)


def ws_frame_bytes(payload: int) -> int:
    """A masked client WebSocket frame's size on the wire (RFC 6455), TCP/TLS not counted."""
    return payload + 6 + (2 if payload >= 126 else 0) + (6 if payload >= 65536 else 0)


def opus(clip: Clip, container: str, bitrate: int = BITRATE) -> bytes:
    """The clip as Opus in `container` (`ogg` or `webm`), encoded by FFmpeg's libopus through PyAV."""
    pcm, rate = clip.pcm16()
    return encode_audio(np.frombuffer(pcm, "<i2"), rate, container, "libopus", bitrate=bitrate)


async def stream_encoded(url: str, data: bytes, seconds: float, encoding: str, *, pace: float = 1.0,
                         chunk_ms: int = 100, language: str = "en", timeout: float = 120.0,
                         targets: list[str] | None = None) -> tuple[SessionRun, int]:
    """Stream a compressed stream's bytes in `chunk_ms` pieces (its bytes spread evenly over its duration, as a
    recorder's timeslices are) at `pace` × real time. Returns the run and the bytes sent on the wire."""
    run = SessionRun(pace=pace)
    pieces = max(1, round(seconds * 1000 / chunk_ms))
    step = -(-len(data) // pieces)
    wire = 0
    start: dict[str, Any] = {"type": "start", "encoding": encoding, "language": language}
    if targets:
        start["targets"] = targets
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_json(start)
        wire += ws_frame_bytes(len(json.dumps(start)))
        first = await ws.receive_json(timeout=30)
        if first.get("type") != "started":
            run.errors.append(first)
            async for _ in ws:  # until the server's close
                pass
            run.close_code = ws.close_code
            return run, wire
        run.started, run.session_id = first, first["session_id"]

        async def reader() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                if m["type"] == "error":
                    run.errors.append(m)
                elif m["type"] == "done":
                    run.done = True
                elif m["type"] in ("partial", "final"):
                    run.results.append(m)
                    run.received_at.append(time.time())

        task = asyncio.create_task(reader())
        run.t0 = time.time()
        for i, off in enumerate(range(0, len(data), step)):
            delay = run.t0 + i * chunk_ms / 1000 / pace - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if ws.closed:
                break
            piece = data[off:off + step]
            await ws.send_bytes(piece)
            wire += ws_frame_bytes(len(piece))
        if not ws.closed:
            await ws.send_json({"type": "stop"})
            wire += ws_frame_bytes(len('{"type": "stop"}'))
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            task.cancel()
        run.close_code = ws.close_code
    return run, wire


async def measure(url: str, clip: Clip, pace: float) -> dict[str, Any]:
    pcm, rate = clip.pcm16()
    if rate != 16000:
        raise SystemExit("use a 16 kHz clip: the PCM figure is for 16 kHz s16le")
    out: dict[str, Any] = {"clip": clip.name, "seconds": clip.seconds, "bitrate": BITRATE, "runs": {}}
    step = rate // 10 * 2
    frames = -(-len(pcm) // step)
    pcm_wire = sum(ws_frame_bytes(min(step, len(pcm) - i * step)) for i in range(frames))
    native = await stream_pcm(url, pcm, rate, pace=pace)
    out["runs"]["pcm_s16le"] = {"payload_Bps": len(pcm) / clip.seconds, "wire_Bps": pcm_wire / clip.seconds,
                                "wer": corpus_wer([(clip.reference, native.text())]), "finals": len(native.finals)}
    for container, encoding in (("ogg", "ogg_opus"), ("webm", "webm_opus")):
        data = opus(clip, container)
        run, wire = await stream_encoded(url, data, clip.seconds, encoding, pace=pace)
        out["runs"][encoding] = {"payload_Bps": len(data) / clip.seconds, "wire_Bps": wire / clip.seconds,
                                 "wer": corpus_wer([(clip.reference, run.text())]), "finals": len(run.finals),
                                 "errors": run.errors}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="ws://127.0.0.1:8080/v1/listen")
    ap.add_argument("--clip", default="en_jfk")
    ap.add_argument("--pace", type=float, default=1.0)
    args = ap.parse_args()
    clip = next(c for c in clips() if c.name.startswith(args.clip))
    report = asyncio.run(measure(args.url, clip, args.pace))
    lines = [f"# Upload bytes per second: PCM vs Opus ({clip.name}, {clip.seconds:.1f} s, Opus at "
             f"{BITRATE // 1000} kbit/s)", "", "| encoding | payload B/s | on the wire B/s (WebSocket frames) | "
             "kbit/s | WER | finals |", "|---|---|---|---|---|---|"]
    for name, r in report["runs"].items():
        lines.append(f"| {name} | {r['payload_Bps']:.0f} | {r['wire_Bps']:.0f} | {r['wire_Bps'] * 8 / 1000:.1f} | "
                     f"{r['wer']:.3f} | {r['finals']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    reports = Path(__file__).parent / "reports"
    reports.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"upload-{stamp}.md", "upload-latest.md"):
        (reports / name).write_text(text)


if __name__ == "__main__":
    main()
