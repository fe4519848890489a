"""Words the audio does not support are dropped (actors/stt/support.py); words it does, never."""

from __future__ import annotations

import numpy as np

from actors.stt.interface import WordTiming
from actors.stt.support import supported

RATE = 16000


def tone(seconds: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def hiss(seconds: float, level: float) -> np.ndarray:
    return np.random.default_rng(3).normal(0, level, int(seconds * RATE)).astype(np.float32)


def w(word: str, start: float, end: float) -> WordTiming:
    return WordTiming(word, start, end, 0.9)


def test_words_in_quiet_audio_outside_the_speech_are_dropped() -> None:
    """A sentence, then room tone 30 dB down after a `stop`: "very much." timed in the room tone goes; the
    sentence's words stay, the last one although its timing runs a little past the VAD's end."""
    audio = np.concatenate([hiss(0.5, 0.005), tone(2.0), hiss(3.0, 0.005)])
    words = [w("to", 0.5, 1.0), w("others.", 1.0, 2.7), w("very", 3.5, 3.8), w("much.", 3.8, 4.1)]
    assert [x.word for x in supported(audio, words, 0.5, 2.5)] == ["to", "others."]


def test_a_reread_squeezed_into_the_pre_roll_is_dropped() -> None:
    """The previous final's last words read again at 0.0 s, in the second of pre-roll before the onset."""
    audio = np.concatenate([hiss(1.0, 0.003), tone(2.0)])
    words = [w("acoustic", 0.0, 0.0), w("purpose.", 0.0, 0.02), w("And", 1.05, 1.3), w("then", 1.3, 1.9)]
    assert [x.word for x in supported(audio, words, 1.0, 3.0)] == ["And", "then"]


def test_soft_speech_the_vad_missed_is_kept() -> None:
    """A soft last word 12 dB under the sentence, after the VAD's end, and a soft first word in the pre-roll:
    loud enough to be speech, so both stay."""
    audio = np.concatenate([tone(0.4, 0.075), hiss(0.6, 0.002), tone(2.0), hiss(0.3, 0.002), tone(0.4, 0.075)])
    words = [w("So", 0.0, 0.4), w("it", 1.0, 2.0), w("goes", 2.0, 3.0), w("on.", 3.3, 3.7)]
    assert supported(audio, words, 1.0, 3.0) == words


def test_too_little_speech_to_judge_keeps_everything() -> None:
    audio = np.concatenate([hiss(1.0, 0.003), tone(0.1)])
    words = [w("yes", 0.2, 0.5)]
    assert supported(audio, words, 1.0, 1.1) == words
    assert supported(audio, [], 0.0, 1.1) == []


def test_int16_samples_are_judged_as_their_float_scale() -> None:
    """The actor passes the segment's int16 samples as they are: levels are only compared with each other."""
    audio = np.concatenate([hiss(0.5, 0.005), tone(2.0), hiss(3.0, 0.005)])
    words = [w("to", 0.5, 1.0), w("others.", 1.0, 2.7), w("very", 3.5, 3.8), w("much.", 3.8, 4.1)]
    pcm = np.round(audio * 32767).astype("<i2")
    assert supported(pcm, words, 0.5, 2.5) == supported(audio, words, 0.5, 2.5) == words[:2]
