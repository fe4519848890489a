"""What each accuracy lever is worth: the finals path replayed in-process, lever by lever.

    python -m loadtest.levers [--groups en multi] [--clips PREFIX ...]

Every dev-set clip goes through the segmenter's state machine in 100 ms chunks, as the segmenter actor feeds
it, and each final cut is decoded by the STT engine with one set of options, the session's previous finals as
prompt where that lever is on. No NATS, no concurrency: the words match what `tolk up` delivers when its
finals lane has headroom (python -m loadtest.accuracy measures that through the real pipeline), and a lever's
effect shows without load noise. The report is printed and saved under loadtest/reports/.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from loadtest.accuracy import GROUPS, Group
from loadtest.mic import REPORTS, command
from loadtest.speech import Clip, at_peak, clips
from loadtest.wer import Counts, counts

if TYPE_CHECKING:
    from actors.segmenter.vad import VadStream


@dataclass(frozen=True)
class Lever:
    name: str
    window_s: float = 10.0
    beam: int = 1
    prompt: bool = False
    segmenter: dict[str, object] = field(default_factory=dict)
    vote: str = "and"
    left_context_s: float = 0.0
    silero_gain: bool = True  # TOLK_VAD_GAIN (webrtcvad always had its gain)
    whisper_level: bool = True  # TOLK_LEVEL_MAX_GAIN_DB > 0: Whisper reads quiet audio raised
    peak_dbfs: float | None = None  # each clip played with its peak at this level (int16 samples), not as recorded


LEVERS = [
    Lever("before: greedy, fitted ≥10 s window, no prompt, min speech 250 ms",
          segmenter={"min_speech_ms": 250, "speculate": False}),
    Lever("+ beam 5", beam=5),
    Lever("+ beam 5, full 30 s window", window_s=30.0, beam=5),
    Lever("+ beam 5, 30 s, previous text as prompt", window_s=30.0, beam=5, prompt=True),
    Lever("+ beam 5, fitted ≥15 s (the loaded tier), prompt", window_s=15.0, beam=5, prompt=True),
    Lever("the busy tier: greedy, fitted ≥10 s, prompt", window_s=10.0, prompt=True),
    Lever("beam 2, fitted ≥10 s, prompt", window_s=10.0, beam=2, prompt=True),
    Lever("beam 5, fitted ≥10 s, prompt", window_s=10.0, beam=5, prompt=True),
    Lever("greedy, 30 s, prompt", window_s=30.0, prompt=True),
    Lever("+ beam 5, 30 s, prompt, VAD vote hysteresis (not kept: merges pauses, more 15 s caps)",
          window_s=30.0, beam=5, prompt=True, vote="hysteresis"),
    Lever("+ beam 5, 30 s, prompt, previous final's last 8 s as left context", window_s=30.0, beam=5, prompt=True,
          left_context_s=8.0),
    Lever("+ beam 5, fitted ≥15 s (loaded), prompt, left context (what fits the window)", window_s=15.0, beam=5,
          prompt=True, left_context_s=8.0),
    Lever("+ beam 5, fitted ≥15 s (loaded), prompt, 2 s of left context (the default)", window_s=15.0, beam=5,
          prompt=True, left_context_s=2.0),
    Lever("+ beam 5, 30 s, prompt, 2 s of left context", window_s=30.0, beam=5, prompt=True, left_context_s=2.0),
    Lever("13 (the idle tier) as before the level work: Silero without the gain, Whisper without the level",
          window_s=30.0, beam=5, prompt=True, left_context_s=2.0, silero_gain=False, whisper_level=False),
    Lever("13, each clip played with its peak at -50 dBFS, as before the level work", window_s=30.0, beam=5,
          prompt=True, left_context_s=2.0, silero_gain=False, whisper_level=False, peak_dbfs=-50.0),
    Lever("13, each clip played with its peak at -50 dBFS, + Silero's gain", window_s=30.0, beam=5,
          prompt=True, left_context_s=2.0, whisper_level=False, peak_dbfs=-50.0),
    Lever("13, each clip played with its peak at -50 dBFS, + Silero's gain + Whisper's level (the default)",
          window_s=30.0, beam=5, prompt=True, left_context_s=2.0, peak_dbfs=-50.0),
    Lever("13, each clip played with its peak at -60 dBFS, as before the level work", window_s=30.0, beam=5,
          prompt=True, left_context_s=2.0, silero_gain=False, whisper_level=False, peak_dbfs=-60.0),
    Lever("13, each clip played with its peak at -60 dBFS, + Silero's gain + Whisper's level (the default)",
          window_s=30.0, beam=5, prompt=True, left_context_s=2.0, peak_dbfs=-60.0),
]


class _Gained:
    """webrtcvad hearing the slow peak gain alone, as before Silero heard it too (levers 14-16, 18)."""

    def __init__(self, inner: VadStream) -> None:
        from actors.segmenter.vad import PeakGain

        self._inner = inner
        self._gain = PeakGain()

    def speech(self, frame: np.ndarray, active: bool) -> bool:
        return self._inner.speech(self._gain(frame), active)

    def reset(self) -> None:
        self._inner.reset()


def finals_text(c: Clip, lever: Lever, engine: object, silero: object) -> tuple[str, int]:
    from actors.segmenter.audio import to_int16_bytes
    from actors.segmenter.segmenter import SegmenterConfig, UtteranceSegmenter
    from actors.segmenter.vad import DualVad, SileroModel, Vote, WebRtcStream
    from actors.stt.engine import SttRequest, WhisperEngine
    from actors.stt.finals import LeftContexts

    assert isinstance(engine, WhisperEngine) and isinstance(silero, SileroModel)
    pcm, rate = c.pcm16()
    audio = np.frombuffer(at_peak(pcm, lever.peak_dbfs), "<i2").astype(np.float32) / 32768
    # before the level work only webrtcvad heard the gain
    webrtc = WebRtcStream(2) if lever.silero_gain else _Gained(WebRtcStream(2))
    seg = UtteranceSegmenter(DualVad(webrtc, silero.stream(0.5), Vote(lever.vote), gain=lever.silero_gain),
                             SegmenterConfig(**lever.segmenter))  # type: ignore[arg-type]
    cuts = []
    for i in range(0, len(audio), rate // 10):
        cuts += seg.push(audio[i : i + rate // 10], i / rate)
    cuts += seg.flush(len(audio) / rate)
    texts: list[str] = []
    left = LeftContexts(lever.left_context_s)
    for cut in (x for x in cuts if x.final):
        prompt = " ".join(texts)[-800:] if lever.prompt else ""
        context = left.left(c.name, c.language, cut.start)
        r = engine.transcribe_batch([SttRequest(cut.audio, c.language, True, prompt, context)], lever.window_s,
                                    lever.beam)[0]
        # as STT receives it: the segment's int16 samples
        left.add(c.name, r.language, np.frombuffer(to_int16_bytes(cut.audio), "<i2"), r.words, cut.start)
        if r.text:
            texts.append(r.text)
    return " ".join(texts), sum(x.final for x in cuts)


def run_group(group: Group, cs: list[Clip], levers: list[Lever]) -> list[tuple[Lever, Counts, int, float]]:
    from actors.runtime import settings
    from actors.segmenter.vad import SileroModel
    from actors.stt.actor import SttSettings
    from actors.stt.engine import WhisperEngine, WhisperOptions
    from actors.stt.models import resolve

    path = resolve(group.model, settings.load(SttSettings).model_cache)
    engine = WhisperEngine(path, WhisperOptions(cpu_threads=os.cpu_count() or 2, workers=1))
    level_db = engine.opts.level_max_gain_db
    silero = SileroModel()
    rows = []
    for lever in levers:
        engine.opts = dataclasses.replace(engine.opts, level_max_gain_db=level_db if lever.whisper_level else 0.0)
        began = time.monotonic()
        total, n = Counts(), 0
        for c in cs:
            text, finals = finals_text(c, lever, engine, silero)
            total, n = total + counts(c.reference, text, c.language), n + finals
        took = time.monotonic() - began
        rows.append((lever, total, n, took))
        print(f"[{group.name}] {lever.name}: WER {total.wer:.4f} "
              f"({total.substitutions}/{total.deletions}/{total.insertions}), {n} finals, {took:.0f} s", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", nargs="+", choices=sorted(GROUPS), default=["en", "multi"])
    p.add_argument("--clips", nargs="*", default=[], help="clip name prefixes (default: the whole dev set)")
    p.add_argument("--levers", nargs="*", type=int, default=[], help="indices into LEVERS (default: all)")
    p.add_argument("--name", default="levers")
    args = p.parse_args()
    lines = ["# Accuracy levers: the finals path replayed in-process", "",
             f"- command: `{command('loadtest.levers')}`",
             "- WER with Whisper's normalisers (loadtest.wer); cells: WER (substitutions/deletions/insertions)", ""]
    for name in args.groups:
        group = GROUPS[name]
        cs = [c for c in clips() if c.language in group.languages
              and (not args.clips or any(c.name.startswith(x) for x in args.clips))]
        rows = run_group(group, cs, [LEVERS[i] for i in args.levers] if args.levers else LEVERS)
        lines += [f"## {group.name} ({group.model}, {len(cs)} clips, {rows[0][1].words} words)", "",
                  "| lever | WER (S/D/I) | finals | replay s (finals decoded one by one: the cost) |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {lv.name} | {c.wer:.4f} ({c.substitutions}/{c.deletions}/{c.insertions}) | {n} | {t:.0f} |"
                  for lv, c, n, t in rows]
        lines.append("")
    report = "\n".join(lines)
    print("\n" + report)
    REPORTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (REPORTS / f"{args.name}-{stamp}.md").write_text(report)
    (REPORTS / f"{args.name}-latest.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
