"""Transcript export formats (SRT, WebVTT, text, OpenAI-style json / verbose_json), as pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas import ClientResult, Transcript

FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
DIARIZED = "diarized_json"  # OpenAI's speaker-labelled segments: asking for it turns diarization on


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str
    words: list[dict[str, Any]] = field(default_factory=list)
    translations: dict[str, str] = field(default_factory=dict)
    speaker: str = ""  # diarized: who said (most of) it
    channel: int | None = None  # a multichannel upload's: the audio channel (0-based) it was heard on

    @classmethod
    def of(cls, r: ClientResult | Transcript, channel: int | None = None) -> Cue:
        """A final as a cue: from its first voiced moment (`speech_start`) to its end. `channel`: given for a
        multichannel file only (a result's own `channel` is 0 on one channel too), on the cue and its words."""
        on = {"channel": channel} if channel is not None else {}
        words = [{"word": w.word, "start": w.start, "end": w.end, "probability": w.probability,
                  **({"speaker": w.speaker} if w.speaker else {}), **on} for w in r.words]
        return cls(r.speech_start or r.start, r.end, r.text, words, dict(r.translations),
                   r.speaker if isinstance(r, ClientResult) else "", channel)


def by_speaker(cues: Sequence[Cue]) -> list[Cue]:
    """Cues whose words change speaker split at each change (text from the words), each with its speaker; others
    as they are."""
    out: list[Cue] = []
    for c in cues:
        runs: list[list[dict[str, Any]]] = []
        for w in c.words:
            if runs and runs[-1][0].get("speaker") == w.get("speaker"):
                runs[-1].append(w)
            else:
                runs.append([w])
        if len(runs) <= 1:
            out.append(c)
            continue
        for k, run in enumerate(runs):
            start = c.start if k == 0 else float(run[0]["start"])
            end = c.end if k == len(runs) - 1 else float(runs[k + 1][0]["start"])
            out.append(Cue(start, end, " ".join(str(w["word"]).strip() for w in run), run, {},
                           str(run[0].get("speaker") or c.speaker), c.channel))
    return out


def monotonic(cues: Sequence[Cue]) -> list[Cue]:
    """Ordered, non-overlapping, non-empty cues: a player shows one caption at a time."""
    out: list[Cue] = []
    last_end = 0.0
    for c in sorted((c for c in cues if c.text.strip()), key=lambda c: (c.start, c.end)):
        start = max(c.start, last_end)
        end = max(c.end, start + 0.001)
        out.append(Cue(round(start, 3), round(end, 3), c.text.strip(), c.words, c.translations, c.speaker,
                       c.channel))
        last_end = end
    return out


def _clock(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


LINE_CHARS = 42  # a subtitle line, as broadcasters and subtitle tools expect
CUE_LINES = 2


def lines(text: str, width: int = LINE_CHARS) -> list[str]:
    """Words filled into lines of at most `width` characters (a longer word gets a line of its own)."""
    out: list[str] = []
    for word in text.split():
        if out and len(out[-1]) + 1 + len(word) <= width:
            out[-1] += " " + word
        else:
            out.append(word)
    return out


def captions(cues: Sequence[Cue], translation: str | None = None) -> list[Cue]:
    """Cues a player can show: at most two lines of ~42 characters each. A longer cue is split into several,
    timed from its words where they are known (the source text), else in proportion to their characters."""
    out: list[Cue] = []
    for c in monotonic(by_speaker(cues) if not translation else cues):
        text = c.translations.get(translation, c.text) if translation else c.text
        rows = lines(text)
        if len(rows) <= CUE_LINES:
            out.append(Cue(c.start, c.end, "\n".join(rows), speaker=c.speaker, channel=c.channel))
            continue
        parts = [rows[i:i + CUE_LINES] for i in range(0, len(rows), CUE_LINES)]
        counts = [sum(len(r.split()) for r in part) for part in parts]
        timed = not translation and len(c.words) == len(text.split())
        total, done, start = len(text), 0, c.start
        for k, part in enumerate(parts):
            body = " ".join(part)
            done += len(body) + 1
            if k == len(parts) - 1:
                end = c.end
            elif timed:
                end = float(c.words[sum(counts[:k + 1]) - 1]["end"])
            else:
                end = c.start + (c.end - c.start) * min(1.0, done / total)
            end = min(c.end - 0.001 * (len(parts) - 1 - k), max(end, start + 0.001))
            out.append(Cue(round(start, 3), round(end, 3), "\n".join(part), speaker=c.speaker, channel=c.channel))
            start = end
    return out


def srt(cues: Sequence[Cue], translation: str | None = None) -> str:
    blocks = []
    for i, c in enumerate(captions(cues, translation), 1):
        text = c.text.replace("-->", "->")  # SRT has no escapes: a timing arrow in the text would start a cue
        if c.speaker:  # the usual speaker prefix (SRT has no voice markup)
            text = f"{c.speaker}: {text}"
        blocks.append(f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{text}\n")
    return "\n".join(blocks)


def _vtt_text(text: str) -> str:
    """WebVTT cue text is markup: `&`, `<` and `>` are escaped, and `-->` (a cue timing) cannot appear."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt(cues: Sequence[Cue], translation: str | None = None) -> str:
    blocks = ["WEBVTT\n"]
    for c in captions(cues, translation):
        body = _vtt_text(c.text)
        if c.speaker:  # WebVTT's voice span: players show (and style) who speaks
            body = f"<v {c.speaker}>{body}</v>"
        blocks.append(f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{body}\n")
    return "\n".join(blocks)


def text(cues: Sequence[Cue]) -> str:
    return " ".join(c.text for c in monotonic(cues))


def by_channel(cues: Sequence[Cue]) -> list[dict[str, Any]]:
    """A multichannel file's text per channel (`[{"channel", "text"}]`, in channel order; [] for one channel): the
    time-ordered text of all channels interleaves people talking over each other."""
    channels = sorted({c.channel for c in cues if c.channel is not None})
    return [{"channel": ch, "text": text([c for c in cues if c.channel == ch])} for ch in channels]


def render(cues: Sequence[Cue], fmt: str, language: str = "", duration: float = 0.0,
           translation: str | None = None) -> tuple[str | dict[str, Any], str]:
    """(body, content type) for `fmt` (one of FORMATS). A multichannel file's JSON says each segment's (and
    word's) `channel`, and gives each channel's own text under `channels`."""
    ordered = monotonic(cues)
    per_channel = by_channel(cues)
    channels: dict[str, Any] = {"channels": per_channel} if per_channel else {}
    if fmt == "srt":
        return srt(ordered, translation), "application/x-subrip; charset=utf-8"
    if fmt == "vtt":
        return vtt(ordered, translation), "text/vtt; charset=utf-8"
    if fmt == "text":
        return text(ordered) + "\n", "text/plain; charset=utf-8"
    if fmt == DIARIZED:
        return {
            "task": "transcribe", "duration": round(duration, 3), "text": text(ordered),
            "segments": [{"type": "transcript.text.segment", "id": f"seg_{i}", "start": c.start, "end": c.end,
                          "text": c.text, "speaker": c.speaker or None,
                          **({"channel": c.channel} if c.channel is not None else {})}
                         for i, c in enumerate(monotonic(by_speaker(ordered)))],
            **channels,
        }, "application/json"
    if fmt == "verbose_json":
        return {
            "task": "transcribe", "language": language, "duration": round(duration, 3), "text": text(ordered),
            "segments": [{"id": i, "start": c.start, "end": c.end, "text": c.text, "words": c.words,
                          **({"translations": c.translations} if c.translations else {}),
                          **({"speaker": c.speaker} if c.speaker else {}),
                          **({"channel": c.channel} if c.channel is not None else {})}
                         for i, c in enumerate(ordered)],
            **channels,
        }, "application/json"
    return {"text": text(ordered), **channels}, "application/json"
