"""Invented words: what Tolk writes where nobody speaks, through a real default `tolk up`.

    python -m loadtest.hallucination [--seconds 30] [--tail 20] [--languages en auto]

Non-speech, `--seconds` each (loadtest/noise.py): digital silence, white noise at -35 dBFS, recorded room tone
at -35 and -22 LUFS, recorded music at -20 LUFS. Then read sentences (the dev set's read clips) followed by
`--tail` seconds of quiet recorded room tone (-45 LUFS): words after the speech ended are invented. Each is one
microphone session per language (`en`: the English pool; `auto`: the multilingual pool with detection), all at
once at real-time pace. Words are counted in finals *and* partials. Goal: 0 everywhere. The last line is
`invented=N` (finals and partials together).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtest import noise
from loadtest.client import SessionRun, stream_pcm
from loadtest.mic import command, machine, save_report, start_tolk
from loadtest.speech import Clip, clips

TAIL_LUFS = -45.0
MARGIN_S = 0.3  # a word starting this soon after the last voiced frame is still the speaker's


@dataclass
class Case:
    scenario: str
    language: str
    pcm: bytes
    speech_end: float = 0.0  # stream seconds where speech ends (0: there is none)


@dataclass
class Row:
    scenario: str
    language: str
    final_words: int
    partial_words: int
    finals: list[str] = field(default_factory=list)
    partials: list[str] = field(default_factory=list)
    errors: int = 0


def speech_end(pcm: bytes) -> float:
    """Stream seconds of the end of a clip's last frame 12 dB over its floor (its last voiced moment)."""
    x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    n = len(x) // noise.FRAME
    energy = 10 * np.log10(np.mean(x[: n * noise.FRAME].reshape(n, noise.FRAME) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy > np.percentile(energy, 10) + 12)
    return float((loud[-1] + 1) * noise.FRAME / noise.RATE) if len(loud) else 0.0


def cases(seconds: float, tail: float, languages: list[str], per_language: int,
          tail_lufs: float = TAIL_LUFS) -> list[Case]:
    sources: dict[str, np.ndarray] = {
        "silence": noise.silence(seconds),
        "white noise -35 dBFS": noise.white(seconds, -35.0),
        "room tone -35 LUFS": noise.at_lufs(noise.room_tone(seconds), -35.0),
        "room tone -22 LUFS": noise.at_lufs(noise.room_tone(seconds), -22.0),
        "music -20 LUFS": noise.at_lufs(noise.music(seconds), -20.0),
    }
    out = [Case(name, lang, noise.to_pcm16(x)) for name, x in sources.items() for lang in languages]
    quiet = noise.to_pcm16(noise.at_lufs(noise.room_tone(tail), tail_lufs))
    for lang in languages:
        pool = [c for c in clips() if _read(c) and c.seconds <= 30 and (c.language == "en") == (lang == "en")]
        read = pool[:: max(1, len(pool) // per_language)][:per_language]  # spread over the corpora
        for c in read:
            pcm, rate = c.pcm16()
            assert rate == noise.RATE, c.name
            out.append(Case(f"{c.name} + {tail:g} s room tone {tail_lufs:g} LUFS", lang, pcm + quiet,
                            speech_end(pcm)))
    return out


def _read(c: Clip) -> bool:
    return c.genre == "read" and "stereo" not in c.name


def invented(case: Case, run: SessionRun) -> Row:
    """Words of this case nobody said: all of them on non-speech; after `speech_end` (+ margin) otherwise."""
    after = case.speech_end + MARGIN_S

    def words(r: dict[str, Any]) -> list[str]:
        if not case.speech_end:
            return r["text"].split()
        if r["words"]:
            return [w["word"].strip() for w in r["words"] if w["start"] >= after]
        return r["text"].split() if (r.get("speech_start") or r["start"]) >= after else []

    fw = [" ".join(words(r)) for r in run.finals]
    pw = [" ".join(words(r)) for r in run.partials]
    return Row(case.scenario, case.language, sum(len(t.split()) for t in fw), sum(len(t.split()) for t in pw),
               [t for t in fw if t], sorted({t for t in pw if t}), len(run.errors) + (not run.done))


async def stream_all(url: str, cs: list[Case]) -> list[SessionRun]:
    async def one(i: int, c: Case) -> SessionRun:
        await asyncio.sleep(0.37 * i)
        return await stream_pcm(url, c.pcm, noise.RATE, language=c.language, timeout=120)

    return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(cs))))


def render(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        "# Tolk invented-words benchmark: non-speech, and room tone after speech",
        "",
        f"- command: `{command('loadtest.hallucination')}`",
        f"- machine: {machine()}",
        f"- a default `tolk up` (pools en=tiny.en, multi=base); every case one session at real-time pace, all at "
        f"once; sources in loadtest/noise.py (room tone recorded in the dev recordings, music from Debian's "
        f"asc-music); after speech: words starting more than {MARGIN_S:g} s after the clip's last voiced frame",
        "",
        "| case | language | words in finals | words in partials | what was written | errors |",
        "|---|---|---:|---:|---|---:|",
    ]
    for r in rows:
        said = "; ".join(f"“{t}”" for t in [*r.finals, *(f"(partial) {p}" for p in r.partials)]) or "—"
        lines.append(f"| {r.scenario} | {r.language} | {r.final_words} | {r.partial_words} | {said} | {r.errors} |")
    total_f = sum(r.final_words for r in rows)
    total_p = sum(r.partial_words for r in rows)
    lines += ["", f"Goal: 0 words in finals and partials on non-speech and after speech ends. Total: {total_f} in "
              f"finals, {total_p} in partials.", "", f"invented={total_f + total_p}"]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    cs = cases(args.seconds, args.tail, args.languages, args.clips, args.tail_lufs)
    env = {k: v for k, v in os.environ.items() if k.startswith("TOLK_")}
    for k in ("TOLK_MODEL", "TOLK_STT_POOLS"):
        os.environ.pop(k, None)  # a default `tolk up`, whatever the shell had set
    with tempfile.TemporaryDirectory(prefix="tolk-hallucination-") as tmp:
        proc, url = start_tolk(Path(tmp), {})
        try:
            runs = await stream_all(url, cs)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=90)
            os.environ.update(env)
    rows = [invented(c, r) for c, r in zip(cs, runs, strict=True)]
    save_report(args.name, render(rows, args), [asdict(r) for r in rows])
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help="length of each non-speech case")
    p.add_argument("--tail", type=float, default=20.0, help="room tone after each read clip")
    p.add_argument("--languages", nargs="+", default=["en", "auto"])
    p.add_argument("--clips", type=int, default=3, help="read clips per language followed by room tone")
    p.add_argument("--tail-lufs", type=float, default=TAIL_LUFS, help="level of the room tone after speech")
    p.add_argument("--name", default="hallucination", help="report name: loadtest/reports/<name>-latest.md")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
