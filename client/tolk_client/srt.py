"""Subtitles written as finals arrive, so a file is usable while the session still runs."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from tolk_client.results import Result


def timestamp(seconds: float, sep: str = ",") -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


class SrtWriter:
    """One cue per non-empty final, flushed at once; `translation` picks a target's text instead."""

    def __init__(self, path: str | Path, translation: str | None = None) -> None:
        self._fh: TextIO = open(path, "w", encoding="utf-8")  # closed in close()
        self.translation = translation
        self.cues = 0

    def add(self, r: Result) -> None:
        text = r.translations.get(self.translation, "") if self.translation else r.text
        text = " ".join(text.replace("-->", "->").split())
        if not r.is_final or not text:
            return
        self.cues += 1
        start = r.speech_start or r.start
        end = max(r.end, start + 0.05)
        self._fh.write(f"{self.cues}\n{timestamp(start)} --> {timestamp(end)}\n{text}\n\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
