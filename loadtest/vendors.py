"""Added latency of the vendor adapters against Tolk's own protocol, on the same clip in the same run.

    python -m loadtest.vendors [--clip en_jfk] [--rounds 2] [--url http://127.0.0.1:8080]

Starts its own `tolk up` unless `--url` is given, then per round, one after another on the same clip:
- live: Tolk's `/v1/listen` (loadtest.client) and the Deepgram SDK on `/v1/listen`, both at real-time pace,
  alternating which goes first; final latency = the final's `end` sent → final received (the client's clock),
  over every final with text (the last one is flushed by `stop` / `CloseStream`);
- files: Tolk's `POST /v1/transcriptions`, the OpenAI SDK (`/v1/audio/transcriptions`, plain and `stream=True`)
  and the Deepgram SDK's pre-recorded `POST /v1/listen`: time from the request to the whole transcript (and,
  streamed, to the first final / first delta).
Writes loadtest/reports/vendors-<time>.md and vendors-latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.client import stream_pcm
from loadtest.mic import command
from loadtest.speech import Clip, clips
from loadtest.wer import corpus_wer

REPORTS = Path(__file__).resolve().parent / "reports"


@dataclass
class DeepgramRun:
    t0: float = 0.0
    pace: float = 1.0
    messages: list[tuple[float, Any]] = field(default_factory=list)  # (arrival wall clock, parsed message)

    def of(self, kind: str) -> list[Any]:
        return [m for _, m in self.messages if getattr(m, "type", None) == kind]

    @property
    def finals(self) -> list[Any]:
        return [m for m in self.of("Results") if m.is_final]

    @property
    def text(self) -> str:
        return " ".join(t for m in self.finals if (t := m.channel.alternatives[0].transcript))

    def final_latencies(self) -> list[float]:
        return [at - (self.t0 + (m.start + m.duration) / self.pace) for at, m in self.messages
                if getattr(m, "type", None) == "Results" and m.is_final and m.channel.alternatives[0].transcript]


def deepgram_client(http: str, api_key: str = "unused-here") -> Any:
    from deepgram import AsyncDeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    ws = http.replace("http", "ws", 1)
    env = DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)
    return AsyncDeepgramClient(api_key=api_key, environment=env)


async def stream_deepgram(api: Any, audio: bytes, bytes_per_s: int, *, pace: float = 1.0, chunk_ms: int = 100,
                          timeout: float = 120.0, **params: Any) -> DeepgramRun:
    """Stream `audio` (raw, or a WAV file: header first) with the Deepgram SDK at `pace`, then CloseStream and
    collect every message until the server closes."""
    run = DeepgramRun(pace=pace)
    step = max(2, bytes_per_s * chunk_ms // 1000 // 2 * 2)
    async with api.listen.v1.connect(model="nova-3", **params) as conn:
        async def reader() -> None:
            async for message in conn:
                run.messages.append((time.time(), message))

        task = asyncio.create_task(reader())
        run.t0 = time.time()
        for i, off in enumerate(range(0, len(audio), step)):
            delay = run.t0 + (i * chunk_ms / 1000) / pace - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await conn.send_media(audio[off:off + step])
        await conn.send_close_stream()
        await asyncio.wait_for(task, timeout)
    return run


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def measure(http: str, clip: Clip, rounds: int) -> dict[str, list[float]]:
    import openai

    pcm, rate = clip.pcm16()
    audio = clip.path.read_bytes()
    dg = deepgram_client(http)
    oa = openai.AsyncOpenAI(base_url=f"{http}/v1", api_key="unused-here", max_retries=0, timeout=300)
    out: dict[str, list[float]] = {}
    texts: dict[str, list[str]] = {}

    def note(key: str, values: list[float], text: str) -> None:
        out.setdefault(key, []).extend(values)
        texts.setdefault(key.split(":")[0], []).append(text)

    async def file_tolk() -> None:
        async with aiohttp.ClientSession() as s:
            began = time.time()
            form = aiohttp.FormData()
            form.add_field("file", audio, filename=clip.path.name)
            form.add_field("language", "en")
            async with s.post(f"{http}/v1/transcriptions", data=form) as resp:
                body = await resp.json()
            note("file-tolk:total", [time.time() - began], body["text"])

    async def file_openai() -> None:
        began = time.time()
        r = await oa.audio.transcriptions.create(model="whisper-1", file=(clip.path.name, audio), language="en")
        note("file-openai:total", [time.time() - began], r.text)

    async def file_openai_stream() -> None:
        began = time.time()
        first, text = None, ""
        async for event in await oa.audio.transcriptions.create(model="whisper-1", file=(clip.path.name, audio),
                                                                language="en", stream=True):
            if event.type == "transcript.text.delta" and first is None:
                first = time.time() - began
            if event.type == "transcript.text.done":
                text = event.text
        note("file-openai-stream:total", [time.time() - began], text)
        out.setdefault("file-openai-stream:first", []).append(first or float("nan"))

    async def file_deepgram() -> None:
        began = time.time()
        pre = await dg.listen.v1.media.transcribe_file(request=audio, model="nova-3", language="en")
        note("file-deepgram:total", [time.time() - began], pre.results.channels[0].alternatives[0].transcript)

    for i in range(rounds):
        for which in (("tolk", "deepgram") if i % 2 == 0 else ("deepgram", "tolk")):  # alternate who goes first
            if which == "tolk":
                native = await stream_pcm(http.replace("http", "ws", 1) + "/v1/listen", pcm, rate, language="en")
                # every final with text, the one flushed by `stop` too, as on the Deepgram side
                note("live-tolk:final", [v for vs in native.final_latencies_by_endpoint().values() for v in vs],
                     native.text())
            else:
                dgrun = await stream_deepgram(dg, pcm, rate * 2, encoding="linear16", sample_rate=rate,
                                              language="en", interim_results="true")
                note("live-deepgram:final", dgrun.final_latencies(), dgrun.text)

        files = [file_tolk, file_openai, file_openai_stream, file_deepgram]
        for job in files[i % len(files):] + files[:i % len(files)]:  # rotate: no adapter always runs first
            await job()
    for name, hyps in texts.items():
        out[f"{name}:wer"] = [corpus_wer([(clip.reference, h) for h in hyps])]
    return out


def render(clip: Clip, rounds: int, m: dict[str, list[float]]) -> str:
    def row(label: str, key: str, base: str) -> str:
        mine, ref = p50(m[key]), p50(m[base])
        wer = m.get(f"{key.split(':')[0]}:wer", [float("nan")])[0]
        spread = f"{min(m[base]):.2f}–{max(m[base]):.2f} / {min(m[key]):.2f}–{max(m[key]):.2f}"
        return f"| {label} | {ref:.3f} | {mine:.3f} | {(mine - ref) * 1000:+.0f} ms | {spread} | {wer:.3f} |"

    lines = [
        "# Vendor adapters: added latency against Tolk's own protocol",
        "",
        f"- command: `{command('loadtest.vendors')}`",
        f"- clip: `{clip.name}` ({clip.seconds:.1f} s), {rounds} round(s), adapters and native alternated in one "
        "`tolk up` (live: alternating who goes first; files: rotating the order); p50 over the round(s) (live: over "
        "every final)",
        "",
        "| adapter | native p50 (s) | adapter p50 (s) | added | min–max native / adapter (s) | adapter WER |",
        "|---|---:|---:|---:|---:|---:|",
        row("Deepgram live `/v1/listen` (final latency)", "live-deepgram:final", "live-tolk:final"),
        row("Deepgram pre-recorded `POST /v1/listen` (whole file)", "file-deepgram:total", "file-tolk:total"),
        row("OpenAI `/v1/audio/transcriptions` json (whole file)", "file-openai:total", "file-tolk:total"),
        row("OpenAI `stream=True` (to `transcript.text.done`)", "file-openai-stream:total", "file-tolk:total"),
        "",
        f"Native WER: live {m['live-tolk:wer'][0]:.3f}, file {m['file-tolk:wer'][0]:.3f}. OpenAI stream: first delta "
        f"after {p50(m['file-openai-stream:first']):.2f} s (p50).",
        "",
    ]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    clip = next(c for c in clips("en") if c.name.startswith(args.clip))
    if args.url:
        m = await measure(args.url.rstrip("/"), clip, args.rounds)
    else:
        from loadtest.mic import start_tolk

        with tempfile.TemporaryDirectory(prefix="tolk-vendors-") as tmp:
            proc, ws = start_tolk(Path(tmp), {})
            try:
                m = await measure(ws.removesuffix("/v1/listen").replace("ws", "http", 1), clip, args.rounds)
            finally:
                proc.terminate()
                proc.wait(60)
    report = render(clip, args.rounds, m)
    print(report)
    REPORTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"vendors-{stamp}.md", "vendors-latest.md"):
        (REPORTS / name).write_text(report)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="en_jfk", help="name prefix of an English clip of the corpus")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--url", default="", help="an edge already running (http://host:port); default: start one")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())

