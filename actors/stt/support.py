"""Words the audio does not support: what Whisper writes outside the speech it was given.

A final's audio is more than its speech: up to a second of pre-roll before the VAD's onset (soft starts), and
after a `stop` every sample to the end (a soft last word the VAD missed). Whisper fills such audio with text of
its own: the end of the previous final read again at the very start ("… the acoustic purpose." then
"acoustic purpose. …"), a closing phrase in the room tone after the last sentence ("… of others. very much.").
Offline Whisper drops most of these through its timestamp rules; a streaming final needs the evidence itself.

A word is dropped only on two pieces of evidence together: it lies outside the span the VAD heard as speech
(by more than the words' timing error), and its audio is quiet: no frame of it within `QUIET_DB` of the
utterance's speech. A soft word the VAD missed is within reach of the speech level and stays.

Pure: samples and word timings in, the words to keep out.
"""

from __future__ import annotations

import numpy as np

from actors.stt.coverage import PER_S, frame_levels
from actors.stt.interface import WordTiming

MARGIN_S = 0.25  # Whisper's word timings are this far off either way
QUIET_DB = 25.0  # a word whose loudest frame is this far below the speech's loud frames holds no speech
MIN_SPEECH_S = 0.2  # less VAD speech than this gives no level to compare with: keep everything


def supported(audio: np.ndarray, words: list[WordTiming], speech_start: float,
              speech_end: float) -> list[WordTiming]:
    """`words` (seconds into `audio`, 16 kHz samples of any type) less those outside [speech_start, speech_end]
    (the VAD's speech, seconds into `audio`) whose audio is quiet. Levels are measured only when a word lies
    outside: most finals' words all overlap the speech."""

    def overlaps(w: WordTiming) -> bool:
        return speech_start - MARGIN_S <= w.end and w.start <= speech_end + MARGIN_S

    if speech_end - speech_start < MIN_SPEECH_S or all(overlaps(w) for w in words):
        return words
    levels = frame_levels(audio)
    inside = levels[max(0, int(speech_start * PER_S)): int(speech_end * PER_S) + 1]
    reference = float(np.percentile(inside, 90)) if inside.size else 0.0
    if reference <= 0:
        return words  # digital silence where the VAD heard speech: nothing to compare with
    floor = reference * 10 ** (-QUIET_DB / 20)

    def keep(w: WordTiming) -> bool:
        if overlaps(w):
            return True
        lo = max(0, int((w.start - MARGIN_S) * PER_S))
        hi = max(lo + 1, int((w.end + MARGIN_S) * PER_S) + 1)
        span = levels[lo:hi]
        return bool(span.size) and float(span.max()) >= floor

    return [w for w in words if keep(w)]
