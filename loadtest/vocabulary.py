"""Vocabulary benchmark: are the words the model gets wrong right once a session names them, and does a
vocabulary of words nobody says change anything?

    python -m loadtest.vocabulary [--groups en multi] [--url ws://...]

Three passes over the dev clips through a real `tolk up` (2x real time, 3 sessions at once):
1. no vocabulary: each clip's *missed words* are the reference words of 4+ letters the finals got wrong or left
   out that are rare in the clip's language (Zipf frequency under 4.5 in `wordfreq`: "Sintra", "Josh", "sloth",
   "thereunder", not "could") and, where the reference marks names with capitals, capitalised — the names and
   rare words a user would put in a vocabulary, found without looking at which they are;
2. each clip with its own missed words as `vocabulary`: recall = share of their occurrences now in the finals
   (goal ≥ 85 %);
3. each clip with every *other* clip's missed words (an unrelated vocabulary): WER against pass 1 (goal ≤ +0.01).
Each missed word is printed with what pass 2 wrote in its place ("'chad' -> 'less chant like'", "[ ]": left out).
The report is printed and saved under loadtest/reports/; the last line is `recall=R wer_delta_unrelated=D`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict, dataclass

import jiwer
from wordfreq import zipf_frequency

from loadtest.client import stream_pcm
from loadtest.mic import command, edge_url, machine, save_report
from loadtest.speech import Clip, clips
from loadtest.wer import corpus_wer, normalise

GROUPS = {"en": ["en"], "multi": ["de", "fr", "es", "pt"]}
MAX_TERMS = 100  # the server's bound per session
RARE_ZIPF = 4.5  # under this a word is rare enough to be worth naming (wordfreq: "think" 6.1, "Josh" 4.35)


@dataclass
class Row:
    group: str
    clips: int
    terms: int
    occurrences: int
    recall_without: float
    recall_with: float
    wer: float
    wer_with: float
    wer_unrelated: float


def missed_words(reference: str, hypothesis: str, language: str) -> list[str]:
    """Rare reference words (as written there) of 4+ letters the hypothesis got wrong or left out."""
    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    if not ref:
        return []
    written = {normalise(w, language)[0]: w.strip(".,;:!?\"'()") for w in reference.split() if normalise(w, language)}
    cased = reference != reference.lower() and reference != reference.upper()
    out = jiwer.process_words(" ".join(ref), " ".join(hyp) or "-")
    missed: list[str] = []
    for chunk in out.alignments[0]:
        if chunk.type in ("substitute", "delete"):
            for w in out.references[0][chunk.ref_start_idx:chunk.ref_end_idx]:
                term = written.get(w, w)
                rare = zipf_frequency(w, language) < RARE_ZIPF
                if len(w) >= 4 and rare and (not cased or term[:1].isupper()) and term not in missed:
                    missed.append(term)
    return missed


def recall(pairs: list[tuple[str, str, list[str]]], language: str) -> tuple[float, int]:
    """Share of the terms' occurrences in the references that the hypotheses have (a bag-of-words match)."""
    found = total = 0
    for reference, hypothesis, terms in pairs:
        ref, hyp = normalise(reference, language), normalise(hypothesis, language)
        for term in terms:
            key = normalise(term, language)
            if not key:
                continue
            n = sum(ref[i:i + len(key)] == key for i in range(len(ref)))
            m = sum(hyp[i:i + len(key)] == key for i in range(len(hyp)))
            total += n
            found += min(n, m)
    return (found / total if total else float("nan")), total


def heard_as(reference: str, hypothesis: str, term: str, language: str) -> str:
    """What the hypothesis has where the reference says the term (its first occurrence; aligned words, normalised),
    with a word either side: what the term came out as, to see why a vocabulary did not bring it."""
    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    key = normalise(term, language)
    at = next((i for i in range(len(ref)) if key and ref[i:i + len(key)] == key), None)
    if at is None or not hyp:
        return ""
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    hyp_at: list[int] = []
    kinds: set[str] = set()
    for chunk in out.alignments[0]:
        for k in range(chunk.ref_start_idx, chunk.ref_end_idx):
            if at <= k < at + len(key):
                lo = chunk.hyp_start_idx + (k - chunk.ref_start_idx if chunk.type in ("equal", "substitute") else 0)
                hyp_at.append(min(lo, chunk.hyp_end_idx))
                kinds.add(chunk.type)
    if not hyp_at:
        return ""
    words = out.hypotheses[0]
    if kinds == {"delete"}:  # left out: the words around the gap
        return " ".join([*words[max(0, hyp_at[0] - 1):hyp_at[0]], "[ ]", *words[hyp_at[0]:hyp_at[0] + 1]])
    lo, hi = max(0, min(hyp_at) - 1), min(len(words), max(hyp_at) + 2)
    return " ".join(words[lo:hi])


async def transcribe(url: str, cs: list[Clip], vocab: dict[str, list[str]]) -> dict[str, str]:
    sem = asyncio.Semaphore(3)

    async def one(c: Clip) -> tuple[str, str]:
        async with sem:
            pcm, rate = c.pcm16()
            fields = {"vocabulary": vocab[c.name][:MAX_TERMS]} if vocab.get(c.name) else {}
            run = await stream_pcm(url, pcm, rate, pace=2.0, language=c.language, timeout=300, start_fields=fields)
            if run.errors:
                raise SystemExit(f"{c.name}: {run.errors}")
            return c.name, run.text()

    return dict(await asyncio.gather(*(one(c) for c in cs)))


async def run_group(url: str, group: str) -> Row:
    cs = [c for lang in GROUPS[group] for c in clips(lang)]
    lang = "en" if group == "en" else "xx"  # normalise: Whisper's English normaliser, or the basic one
    base = await transcribe(url, cs, {})
    terms = {c.name: missed_words(c.reference, base[c.name], c.language) for c in cs}
    own = await transcribe(url, cs, terms)
    others = {c.name: [t for d in cs if d.name != c.name for t in terms[d.name]
                       if t.lower() not in c.reference.lower()] for c in cs}
    unrelated = await transcribe(url, cs, others)
    without, occurrences = recall([(c.reference, base[c.name], terms[c.name]) for c in cs], lang)
    with_vocab, _ = recall([(c.reference, own[c.name], terms[c.name]) for c in cs], lang)

    def wer(hyps: dict[str, str]) -> float:
        return corpus_wer([(c.reference, hyps[c.name]) for c in cs], lang)

    for c in cs:
        for term in terms[c.name]:
            print(f"  {c.name}: {term!r} -> {heard_as(c.reference, own[c.name], term, c.language)!r}", flush=True)
    return Row(group, len(cs), sum(len(t) for t in terms.values()), occurrences, without, with_vocab, wer(base),
               wer(own), wer(unrelated))


def render(rows: list[Row]) -> str:
    lines = [
        "# Vocabulary: the words the model got wrong, named by the session",
        "",
        f"`{command('loadtest.vocabulary')}` — {machine()}, {time.strftime('%Y-%m-%d %H:%M')}. Goals: recall with "
        "≥ 85 %, WER with an unrelated vocabulary ≤ +0.01.",
        "",
        "| group | clips | missed words | occurrences | recall without | recall with | WER | WER with own | "
        "WER with unrelated |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.group} | {r.clips} | {r.terms} | {r.occurrences} | {r.recall_without:.0%} | "
                     f"{r.recall_with:.0%} | {r.wer:.3f} | {r.wer_with:.3f} | {r.wer_unrelated:.3f} |")
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    rows = []
    with edge_url(args.url, "tolk-vocab-") as url:
        for group in args.groups:
            rows.append(await run_group(url, group))
            print(render(rows[-1:]), flush=True)
    save_report(args.name, render(rows), [asdict(r) for r in rows])
    found = sum(r.recall_with * r.occurrences for r in rows) / max(1, sum(r.occurrences for r in rows))
    delta = max(r.wer_unrelated - r.wer for r in rows)
    print(f"recall={found:.2f} wer_delta_unrelated={delta:+.3f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", nargs="+", choices=sorted(GROUPS), default=["en", "multi"])
    p.add_argument("--url", default=None, help="benchmark a running edge instead of starting `tolk up`")
    p.add_argument("--name", default="vocabulary", help="report name: loadtest/reports/<name>-latest.md")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
