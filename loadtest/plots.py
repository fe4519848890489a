"""Charts for the benchmarks (matplotlib, Agg backend: no display needed).

    python -m loadtest.plots [--out docs/img] [--latency mic-int16 mic-tail06] [--continuous mic-continuous-reread]
                             [--accuracy accuracy-tail06]

`loadtest.mic` and `loadtest.accuracy` call `mic_plots` / `accuracy_plots` right after saving a report, with
the raw figures in hand, and write the PNGs next to it (loadtest/reports/<name>-*.png). A chart that cannot be
drawn (matplotlib missing, no data) is reported on stderr and never costs the report it illustrates.

`python -m loadtest.plots` draws the charts of docs/benchmarks.md from saved reports: from a report's raw data
(`<name>-<stamp>.json`, which loadtest.mic writes and git ignores) where it is there, else from the markdown
report itself, which keeps percentiles (a CDF then shows only its known points: p50, p95, max) and per-clip
error counts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPORTS = Path(__file__).resolve().parent / "reports"
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"

# A clip's genre from its corpus name (`en_librivox_…`: the second part); see ../shared/data/speech/README.md.
GENRES = {
    "jfk": "speeches", "gb0": "speeches",
    "librivox": "audiobooks", "librispeech": "audiobooks", "stereo": "audiobooks", "ljspeech": "audiobooks",
    "fleurs": "FLEURS read sentences",
    "conversational": "unscripted", "spontaneous": "unscripted",
}


def genre(clip: str) -> str:
    """`en_librivox_sense_0870.wav` → `en audiobooks`; `de_fleurs_000_id2003.wav` → `de FLEURS read sentences`."""
    parts = Path(clip).stem.split("_")
    kind = parts[1] if len(parts) > 1 else "other"
    return f"{parts[0]} {GENRES.get(kind, kind)}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def safely(what: str, draw: Callable[[], Path | None]) -> Path | None:
    """Draw one chart; any failure is one line on stderr, so a benchmark never loses its report to a plot."""
    try:
        path = draw()
    except Exception as e:  # matplotlib missing, odd data: the report is what matters
        print(f"plot {what}: not written ({type(e).__name__}: {e})", file=sys.stderr)
        return None
    if path:
        print(f"plot {what}: {path}")
    return path


# ------------------------------------------------------------------------------------------------- charts


def latency_cdf(series: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Empirical CDF of each series of latencies (seconds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5 if len(series) > 6 else 7.5, 4.4))
    if len(series) > 10:
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    for label, values in series.items():
        xs = sorted(values)
        if xs:
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=f"{label} (n={len(xs)})")
    _cdf_axes(ax, title, outside=len(series) > 6)
    return _save(fig, path)


def quantile_cdf(series: Mapping[str, Mapping[float, float]], path: Path, title: str) -> Path:
    """A CDF's known points where only percentiles were kept: {quantile (0–1): latency (s)} per series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, points in series.items():
        qs = sorted(points)
        ax.plot([points[q] for q in qs], qs, marker="o", linestyle="--", label=label)
    _cdf_axes(ax, title + "\n(known points of the CDF: p50, p95 and, where kept, the max)")
    return _save(fig, path)


def _cdf_axes(ax: Any, title: str, outside: bool = False) -> None:
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("fraction of results")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    if outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8, loc="lower right")


def wer_bars(bars: Mapping[str, tuple[float, float | None]], path: Path, title: str) -> Path:
    """Streaming WER (and offline, where measured) per label: a language group or a genre."""
    plt = _pyplot()
    labels = list(bars)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.4))
    xs = range(len(labels))
    streaming = [bars[k][0] for k in labels]
    offline = [bars[k][1] for k in labels]
    ax.bar([x - 0.2 for x in xs], streaming, 0.4, label="streaming (Tolk)")
    if any(v is not None for v in offline):
        ax.bar([x + 0.2 for x in xs], [v or 0.0 for v in offline], 0.4, label="offline transcribe(), same model")
    for x, v in zip(xs, streaming, strict=True):
        ax.annotate(f"{v:.3f}", (x - 0.2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), labels, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("WER (Whisper's normalisers)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def load_curve(series: Mapping[str, Sequence[tuple[int, float, float]]], path: Path, title: str,
               ceiling: float | None = None, cpu: Sequence[tuple[int, float]] = ()) -> Path:
    """p50 (solid) and p95 (dashed) latency against concurrent sessions: {label: [(sessions, p50, p95)]}; with
    `cpu` [(sessions, % of one core)], the STT processes' CPU on a second axis (grey, dotted).

    Points above `ceiling` are drawn at it, marked with their value (one stalled level must not flatten the rest).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for i, (label, rows) in enumerate(series.items()):
        rows = sorted(rows)
        colour = f"C{i}"
        for k, style, name in ((1, "-", "p50"), (2, "--", "p95")):
            xs = [r[0] for r in rows]
            ys = [min(r[k], ceiling) if ceiling else r[k] for r in rows]
            ax.plot(xs, ys, style, marker="o", color=colour, label=f"{label} {name}")
            for r, y in zip(rows, ys, strict=True):
                if ceiling and r[k] > ceiling:
                    ax.annotate(f"{r[k]:.1f} s", (r[0], y), textcoords="offset points", xytext=(4, -10),
                                fontsize=7, color=colour)
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("latency (s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if cpu:
        twin = ax.twinx()
        pts = sorted(cpu)
        line, = twin.plot([p[0] for p in pts], [p[1] for p in pts], ":", marker="s", color="grey",
                          label="STT CPU (% of one core)")
        twin.set_ylabel("STT CPU (% of one core)", fontsize=8)
        twin.set_ylim(bottom=0)
        handles, labels = [*handles, line], [*labels, line.get_label()]
    ax.legend(handles, labels, fontsize=7, ncol=2)
    return _save(fig, path)


# ------------------------------------------------------------------------------------ from the benchmarks


def mic_plots(name: str, rows: Sequence[Any], out: Path = REPORTS) -> list[Path]:
    """loadtest.mic's charts from its rows: latency CDF of finals and first partials per level (paused) and per
    endpoint type (continuous), and the load curve where there are two levels or more."""
    written = []

    def cdf() -> Path | None:
        series: dict[str, list[float]] = {}
        for r in rows:
            tag = f"{r.sessions} sess{' continuous' if r.mode == 'continuous' else ''}"
            for endpoint, xs in (r.by_endpoint or {}).items():
                if endpoint in ("silence", "gap", "max_duration") and xs:
                    series[f"{tag}: finals ({endpoint})"] = xs
            if r.first_partials:
                series[f"{tag}: first partials"] = r.first_partials
        return latency_cdf(series, out / f"{name}-latency-cdf.png", f"{name}: latency CDF") if series else None

    def load() -> Path | None:
        paused = [r for r in rows if r.mode == "paused"]
        if len({r.sessions for r in paused}) < 2:
            return None
        cpu = [(r.sessions, sum(v for k, v in r.cpu.items() if k.startswith("stt"))) for r in paused if r.cpu]
        return load_curve({"finals": [(r.sessions, r.final_p50, r.final_p95) for r in paused],
                           "first partials": [(r.sessions, r.first_partial_p50, r.first_partial_p95) for r in paused]},
                          out / f"{name}-load.png", f"{name}: latency against load", cpu=cpu)

    for what, draw in (("latency CDF", cdf), ("load curve", load)):
        if path := safely(f"{name} {what}", draw):
            written.append(path)
    return written


def accuracy_plots(name: str, results: Sequence[Any], out: Path = REPORTS) -> list[Path]:
    """loadtest.accuracy's chart from its results: WER per group, then per genre, streaming next to offline."""

    def draw() -> Path:
        from loadtest.wer import Counts

        clips = [(genre(r.clip), r.stream, r.offline) for g in results for r in g.rows]
        bars = {f"{g.group} ({g.model})": (g.stream.wer, g.offline.wer if g.offline.words else None)
                for g in results}
        for label in sorted({c[0] for c in clips}):
            s = sum((c[1] for c in clips if c[0] == label), Counts())
            o = sum((c[2] for c in clips if c[0] == label), Counts())
            bars[label] = (s.wer, o.wer if o.words else None)
        return wer_bars(bars, out / f"{name}-wer.png", f"{name}: WER per group and genre")

    path = safely(f"{name} WER", draw)
    return [path] if path else []


# ----------------------------------------------------------------------------------- from saved reports

_CELL = re.compile(r"(\d+\.\d+) \((\d+)/(\d+)/(\d+)\)")
_PAIR = re.compile(r"(\d+\.\d+) / (\d+\.\d+)")
_TRIPLE = re.compile(r"(\d+\.\d+) / (\d+\.\d+) / (\d+\.\d+) \((\d+)\)")


def report(name: str, reports: Path = REPORTS) -> str:
    path = reports / f"{name}-latest.md"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such report")
    return path.read_text()


def raw_rows(name: str, reports: Path = REPORTS) -> list[dict[str, Any]] | None:
    """A loadtest.mic report's raw rows (the newest `<name>-<stamp>.json`), where they were kept."""
    found = sorted(p for p in reports.glob(f"{name}-*.json") if re.fullmatch(rf"{re.escape(name)}-\d{{8}}-\d{{6}}",
                                                                            p.stem))
    return json.loads(found[-1].read_text()) if found else None


def mic_levels(text: str) -> list[tuple[int, str, float, float, float, float]]:
    """A mic report's main table: (sessions, mode, first partial p50, p95, final p50, p95) per level."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\| (\d+)( \(continuous\))? \| \d\.\d+ \| ([^|]+) \| ([^|]+) \| \d+ \| \d+ \|$", line)
        if m and (first := _PAIR.search(m[3])) and (final := _PAIR.search(m[4])):
            out.append((int(m[1]), "continuous" if m[2] else "paused", float(first[1]), float(first[2]),
                        float(final[1]), float(final[2])))
    return out


def mic_endpoints(text: str) -> dict[str, dict[float, float]]:
    """A continuous mic report's endpoint table: {"6 sess continuous: finals (gap)": {0.5: p50, 0.95: p95, 1: max}}."""
    header: list[str] = []
    out: dict[str, dict[float, float]] = {}
    for line in text.splitlines():
        if line.startswith("| sessions | input |"):
            header = [c.strip().strip("`") for c in line.strip("|").split("|")]
            continue
        m = re.match(r"\| (\d+) \| (paused|continuous) \|", line)
        if header and m:
            cells = [c.strip() for c in line.strip("|").split("|")]
            for kind, cell in zip(header, cells, strict=False):
                if (t := _TRIPLE.fullmatch(cell)) and int(t[4]) >= 3:
                    tag = f"{m[1]} sess{' continuous' if m[2] == 'continuous' else ''}: finals ({kind})"
                    out[tag] = {0.5: float(t[1]), 0.95: float(t[2]), 1.0: float(t[3])}
    return out


def accuracy_clips(text: str) -> list[tuple[str, str, tuple[int, int], tuple[int, int]]]:
    """An accuracy report's per-clip rows: (clip, language, (streaming errors, words), (offline errors, words))."""
    refs = _references()
    out = []
    for line in text.splitlines():
        m = re.match(r"\| (\S+\.wav) \| [\d.]+ \| ([^|]+) \| ([^|]+) \|$", line)
        if not m or not (s := _CELL.search(m[2])) or not (o := _CELL.search(m[3])):
            continue
        clip, language = m[1], m[1].split("_")[0]
        s_err, o_err = sum(map(int, s.groups()[1:])), sum(map(int, o.groups()[1:]))
        words = _words(refs.get(clip), language, [(float(s[1]), s_err), (float(o[1]), o_err)])
        if words:
            out.append((clip, language, (s_err, words), (o_err, words)))
    return out


def _references() -> dict[str, str]:
    try:
        from loadtest.speech import clips

        return {c.name: c.reference for c in clips()}
    except OSError:  # no corpus here: word counts are estimated from the report's own figures
        return {}


def _words(reference: str | None, language: str, cells: list[tuple[float, int]]) -> int | None:
    """The reference's word count as the WER counted it (Whisper's normaliser), else errors / WER."""
    if reference is not None:
        from loadtest.wer import normalise

        return len(normalise(reference, language))
    return next((round(errors / wer) for wer, errors in cells if wer > 0), None)


def accuracy_groups(text: str) -> dict[str, tuple[float, float | None]]:
    """An accuracy report's summary: {"en (tiny.en)": (streaming WER, offline WER)}."""
    out: dict[str, tuple[float, float | None]] = {}
    for line in text.splitlines():
        m = re.match(r"\| (\w+) \| ([^|]+) \| \d+ \| \d+ \| ([^|]+) \| ([^|]+) \|", line)
        if m and (s := _CELL.search(m[3])):
            o = _CELL.search(m[4])
            out[f"{m[1]} ({m[2].strip()})"] = (float(s[1]), float(o[1]) if o else None)
    return out


def from_reports(out: Path, latency: Sequence[str], continuous: str, accuracy: str,
                 reports: Path = REPORTS) -> list[Path]:
    """docs/benchmarks.md's charts, from the saved reports named."""

    def load() -> Path:
        newest: dict[int, tuple[str, tuple[int, str, float, float, float, float]]] = {}
        for name in latency:  # oldest first: each level from the newest report that measured it
            for lv in mic_levels(report(name, reports)):
                if lv[1] == "paused":
                    newest[lv[0]] = (name, lv)
        levels = [newest[n][1] for n in sorted(newest)]
        sources = ", ".join(f"{n}: {newest[n][0]}" for n in sorted(newest))
        return load_curve({"finals": [(lv[0], lv[4], lv[5]) for lv in levels],
                           "first partials": [(lv[0], lv[2], lv[3]) for lv in levels]},
                          out / "latency-load.png",
                          f"Latency against concurrent sessions (tiny.en, 2 CPU cores)\nsessions: report = {sources}",
                          ceiling=4.0)

    def cdf() -> Path:
        raw = raw_rows(continuous, reports)
        title = f"Final latency per endpoint type ({continuous})"
        if raw:
            series = {f"{r['sessions']} sess{' continuous' if r['mode'] == 'continuous' else ''}: finals ({k})": xs
                      for r in raw for k, xs in (r.get("by_endpoint") or {}).items()
                      if k in ("silence", "gap", "max_duration") and len(xs) >= 3}
            return latency_cdf(series, out / "latency-cdf.png", title)
        return quantile_cdf(mic_endpoints(report(continuous, reports)), out / "latency-cdf.png", title)

    def wer() -> Path:
        text = report(accuracy, reports)
        bars = accuracy_groups(text)
        by_genre: dict[str, list[tuple[int, int, int]]] = {}
        for clip, _, (s_err, words), (o_err, _) in accuracy_clips(text):
            by_genre.setdefault(genre(clip), []).append((s_err, o_err, words))
        for label in sorted(by_genre):
            rows = by_genre[label]
            words = sum(r[2] for r in rows)
            bars[label] = (sum(r[0] for r in rows) / words, sum(r[1] for r in rows) / words)
        return wer_bars(bars, out / "wer-genre.png", f"WER per language group and genre ({accuracy})")

    return [p for what, draw in (("load curve", load), ("latency CDF", cdf), ("WER per genre", wer))
            if (p := safely(what, draw))]


def main() -> int:
    p = argparse.ArgumentParser(description="Draw docs/benchmarks.md's charts from saved reports.")
    p.add_argument("--out", type=Path, default=DOCS_IMG, help="where the PNGs go")
    p.add_argument("--reports", type=Path, default=REPORTS)
    p.add_argument("--latency", nargs="+", default=["mic-int16", "mic-tail06"],
                   help="loadtest.mic reports for the load curve, oldest first: each level from the newest that has it")
    p.add_argument("--continuous", default="mic-continuous-reread", help="a --continuous loadtest.mic report")
    p.add_argument("--accuracy", default="accuracy-tail06", help="a loadtest.accuracy report")
    args = p.parse_args()
    written = from_reports(args.out, args.latency, args.continuous, args.accuracy, args.reports)
    return 0 if len(written) == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
