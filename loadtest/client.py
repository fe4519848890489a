"""A WebSocket client that streams a clip like a microphone and records what comes back, and when."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class SessionRun:
    session_id: str = ""
    started: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)  # wall clock per result
    errors: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    close_code: int | None = None
    t0: float = 0.0  # wall clock when stream time 0 was sent
    pace: float = 1.0
    sent_seconds: float = 0.0
    configured: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (wall clock, ack)

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["type"] == "final"]

    @property
    def partials(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["type"] == "partial"]

    def text(self) -> str:
        return " ".join(r["text"] for r in self.finals if r["text"])

    def sent_wall(self, stream_s: float) -> float:
        """When the audio at `stream_s` left the client (audio is sent at `pace` × real time)."""
        return self.t0 + stream_s / self.pace

    def final_latencies(self, endpoint: str = "silence") -> list[float]:
        """Seconds from sending a final's `end` to receiving it, for finals with this `endpoint`.

        For `silence` that is from the end of speech (the pause included); for `gap` and `max_duration` (cut in
        running speech) from the cut; `stop` finals wait for the client's stop and are not "after their end".
        """
        return self.final_latencies_by_endpoint().get(endpoint, [])

    def final_latencies_by_endpoint(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for r, at in zip(self.results, self.received_at, strict=True):
            if r["type"] == "final" and r["text"]:
                out.setdefault(r.get("endpoint") or "", []).append(at - self.sent_wall(r["end"]))
        return out

    def first_partial_latencies(self) -> list[float]:
        """Seconds from sending an utterance's speech onset to its first text (partial or final).

        Utterances continuing a cut in running speech (max_duration, gap) have no onset of their own and are
        skipped.
        """
        continued = set()
        for r in self.finals:
            if r.get("endpoint") in ("max_duration", "gap"):
                continued.add(r["utterance_id"] + 1)
        first: dict[int, tuple[float, float]] = {}
        for r, at in zip(self.results, self.received_at, strict=True):
            u = r["utterance_id"]
            if r["text"] and u not in continued and u not in first:
                first[u] = (at, r["speech_start"])
        return [at - self.sent_wall(onset) for at, onset in first.values()]


async def stream_pcm(
    url: str,
    pcm: bytes,
    sample_rate: int,
    *,
    pace: float = 1.0,
    chunk_ms: int = 100,
    language: str = "en",
    encoding: str = "pcm_s16le",
    base64_frames: bool = False,
    session_id: str | None = None,
    timeout: float = 120.0,
    targets: list[str] | None = None,
    translate_partials: bool = False,
    configure: list[tuple[float, dict[str, Any]]] | None = None,
    start_fields: dict[str, Any] | None = None,
    channels: int = 1,
) -> SessionRun:
    """Stream `pcm` at `pace` × real time, send stop, collect results until `done` and close.

    `channels` > 1: `pcm` holds that many channels interleaved, sent as one multichannel session.

    `configure`: (stream second, message) pairs sent as `{"type": "configure", ...}` mid-stream;
    `start_fields`: more of the `start` message (`vocabulary`, `endpoint_ms`, ...).
    """
    import base64

    run = SessionRun(pace=pace)
    width = (2 if encoding == "pcm_s16le" else 4) * channels  # bytes per frame of every channel
    step = int(sample_rate * chunk_ms / 1000) * width
    start: dict[str, Any] = {"type": "start", "sample_rate": sample_rate, "encoding": encoding, "language": language}
    if session_id:
        start["session_id"] = session_id
    if channels > 1:
        start["channels"] = channels
    if targets:
        start["targets"] = targets
        start["translate_partials"] = translate_partials
    start.update(start_fields or {})
    pending = sorted(configure or [], key=lambda c: c[0])
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_json(start)
        first = await ws.receive_json(timeout=30)
        if first.get("type") != "started":
            run.errors.append(first)
            return run
        run.started = first
        run.session_id = first["session_id"]

        async def reader() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if data["type"] == "error":
                    run.errors.append(data)
                elif data["type"] == "done":
                    run.done = True
                elif data["type"] == "configured":
                    run.configured.append((time.time(), data))
                else:
                    run.results.append(data)
                    run.received_at.append(time.time())

        read_task = asyncio.create_task(reader())
        run.t0 = time.time()
        for i, off in enumerate(range(0, len(pcm), step)):
            due = run.t0 + (i * chunk_ms / 1000) / pace
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            while pending and pending[0][0] <= off / width / sample_rate:
                await ws.send_json({"type": "configure", **pending.pop(0)[1]})
            frame = pcm[off : off + step]
            if base64_frames:
                await ws.send_str(json.dumps({"type": "audio", "data": base64.b64encode(frame).decode()}))
            else:
                await ws.send_bytes(frame)
            run.sent_seconds = (off + len(frame)) / width / sample_rate
        await ws.send_json({"type": "stop"})
        try:
            await asyncio.wait_for(read_task, timeout)
        except TimeoutError:
            read_task.cancel()
        run.close_code = ws.close_code
    return run


def main() -> None:
    """`python -m loadtest.client FILE.wav [--url ...]`: stream a WAV like a microphone, print results."""
    import argparse
    import wave

    p = argparse.ArgumentParser(description="stream a 16-bit PCM WAV file to Tolk at real-time pace")
    p.add_argument("wav")
    p.add_argument("--url", default="ws://127.0.0.1:8080/v1/listen")
    p.add_argument("--language", default="en")
    p.add_argument("--pace", type=float, default=1.0, help="1 = real time")
    p.add_argument("--targets", default="", help="comma-separated target languages, e.g. pt,de")
    args = p.parse_args()
    with wave.open(args.wav) as w:
        if w.getsampwidth() != 2:
            raise SystemExit("only 16-bit PCM WAV files")
        rate, channels, frames = w.getframerate(), w.getnchannels(), w.readframes(w.getnframes())
    if channels > 1:
        import numpy as np

        frames = np.frombuffer(frames, "<i2").reshape(-1, channels)[:, 0].tobytes()
    run = asyncio.run(stream_pcm(args.url, frames, rate, pace=args.pace, language=args.language,
                                targets=[t for t in args.targets.split(",") if t]))
    for r in run.results:
        print(json.dumps(r, ensure_ascii=False))
    for e in run.errors:
        print(json.dumps(e, ensure_ascii=False))
    print(f"# done={run.done} close={run.close_code}")


if __name__ == "__main__":
    main()
