"""Added latency of the Speechmatics adapter (`/v2`, driven by Speechmatics' own SDK) against Tolk's native
protocol (`/v1/listen`), on the same clip, in the same run, against a running `tolk up`.

Rounds alternate native and Speechmatics sessions (one at a time, real-time pace), so both see the same load.
A final's latency is the same on both sides: from sending the audio of its last word to receiving the final
(`final.words[-1].end` natively, `AddTranscript.metadata.end_time` from the adapter, which is that same word's
end). Prints a Markdown report and saves it under loadtest/reports/.

    python -m loadtest.speechmatics_latency [--http http://127.0.0.1:8080] [--clip en_jfk] [--rounds 3] [--token KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from loadtest.client import SessionRun, stream_pcm
from loadtest.speech import clips
from loadtest.speechmatics_client import stream_sdk
from loadtest.wer import corpus_wer


def native_latencies(run: SessionRun) -> list[float]:
    return [at - run.sent_wall(r["words"][-1]["end"]) for r, at in zip(run.results, run.received_at, strict=True)
            if r["type"] == "final" and r["text"] and r["words"]]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(values), "median": statistics.median(ordered) if ordered else float("nan"),
            "mean": statistics.fmean(ordered) if ordered else float("nan"),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if ordered else float("nan")}


async def measure(http: str, clip_prefix: str, rounds: int, pace: float, token: str | None) -> dict[str, Any]:
    clip = next(c for c in clips() if c.name.startswith(clip_prefix))
    pcm, rate = clip.pcm16()
    ws = http.replace("http", "ws", 1)
    native_url = f"{ws}/v1/listen" + (f"?token={token}" if token else "")
    out: dict[str, Any] = {"clip": clip.name, "seconds": clip.seconds, "rounds": rounds, "pace": pace,
                           "native": [], "speechmatics": [], "wer": {"native": [], "speechmatics": []}}
    for _ in range(rounds):
        run = await stream_pcm(native_url, pcm, rate, pace=pace, language=clip.language, timeout=180)
        out["native"] += native_latencies(run)
        out["wer"]["native"].append(corpus_wer([(clip.reference, run.text())], clip.language))
        sm = await stream_sdk(f"{ws}/v2", pcm, bytes_per_s=rate * 2, pace=pace, language=clip.language,
                              sample_rate=rate, chunk_size=rate // 5, token=token)
        if sm.error:
            raise SystemExit(f"speechmatics session failed: {sm.error}")
        out["speechmatics"] += sm.final_latencies()
        out["wer"]["speechmatics"].append(corpus_wer([(clip.reference, sm.text())], clip.language))
    return out


def report(m: dict[str, Any]) -> str:
    n, s = summary(m["native"]), summary(m["speechmatics"])
    lines = [
        f"# Speechmatics adapter vs native protocol: final latency ({time.strftime('%Y-%m-%d %H:%M')})", "",
        f"Clip {m['clip']} ({m['seconds']:.1f} s), {m['rounds']} rounds alternating, pace {m['pace']}×. Latency: "
        "sending the audio of a final's last word → receiving the final.", "",
        "| protocol | finals | median ms | mean ms | p90 ms | WER per round |", "|---|---|---|---|---|---|",
        f"| native `/v1/listen` | {n['n']} | {n['median'] * 1000:.0f} | {n['mean'] * 1000:.0f} | "
        f"{n['p90'] * 1000:.0f} | {', '.join(f'{w:.3f}' for w in m['wer']['native'])} |",
        f"| Speechmatics SDK `/v2` | {s['n']} | {s['median'] * 1000:.0f} | {s['mean'] * 1000:.0f} | "
        f"{s['p90'] * 1000:.0f} | {', '.join(f'{w:.3f}' for w in m['wer']['speechmatics'])} |", "",
        f"Added by the adapter: median {(s['median'] - n['median']) * 1000:+.0f} ms, mean "
        f"{(s['mean'] - n['mean']) * 1000:+.0f} ms.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http", default="http://127.0.0.1:8080")
    ap.add_argument("--clip", default="en_jfk")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pace", type=float, default=1.0)
    ap.add_argument("--token", default=None)
    args = ap.parse_args()
    text = report(asyncio.run(measure(args.http, args.clip, args.rounds, args.pace, args.token)))
    print(text)
    reports = Path(__file__).parent / "reports"
    reports.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"speechmatics-latency-{stamp}.md", "speechmatics-latency-latest.md"):
        (reports / name).write_text(text)


if __name__ == "__main__":
    main()
