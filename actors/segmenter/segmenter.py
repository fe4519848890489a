"""Per-session utterance state machine: INACTIVE → ACTIVE ⇄ SILENCE → (endpoint) INACTIVE.

Pure computation on 16 kHz float32 frames: no NATS, no clocks of its own, so it is unit-tested
directly on real recordings. The caller passes the wall time each chunk arrived so results can
report latency from the end of speech.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from dataclasses import dataclass

import numpy as np

from actors.segmenter.vad import FRAME, SAMPLE_RATE, VadStream
from schemas import ENDPOINT_MS_RANGE, MAX_UTTERANCE_S_RANGE, NO_ENDPOINT, Endpoint

FRAME_S = FRAME / SAMPLE_RATE


class State(enum.Enum):
    INACTIVE = "inactive"
    ACTIVE = "active"
    SILENCE = "silence"


@dataclass(frozen=True)
class SegmenterConfig:
    endpoint_ms: int = 500  # silence that ends a short utterance
    # Continuous speech (a presenter who never pauses for endpoint_ms): the pause that ends an utterance
    # shrinks as it grows, from endpoint_ms at shrink_after_s down to endpoint_min_ms at soft_max_s; past
    # soft_max_s the first gap of gap_ms ends it (Endpoint.GAP): frames the VAD calls silence or that dip gap_db
    # under the utterance's loud frames (the VAD's hangover bridges short breaths). 0 for soft_max_s: off.
    endpoint_min_ms: int = 200
    shrink_after_s: float = 6.0
    soft_max_s: float = 10.0
    gap_ms: int = 128  # longer than the silent closure of a stop consonant inside a word ("mor|tos")
    gap_min_ms: int = 64  # ...and, as the dip, the gap needed shrinks to this at the cap
    gap_db: float = 32.0  # in that phase a frame also counts as gap when this far below the utterance's loud frames
    # ...and the dip needed relaxes linearly from gap_db at soft_max_s to gap_db_min at the cap: a cut at a
    # shallower dip beats the cap's forced cut, and comes sooner. gap_db_min = gap_db: a fixed dip.
    gap_db_min: float = 20.0
    max_utterance_s: float = 15.0  # with no gap at all, speech is cut at the quietest point of the last...
    cap_lookback_s: float = 2.0  # ...this many seconds (never further back than half the utterance)
    partial_every_ms: int = 700  # new speech between partial windows
    # ...or this fraction of the utterance so far, when more: a partial re-decodes the whole utterance, so on
    # long (continuous) utterances a fixed cadence makes partials cost quadratically. 0: off
    # (docs/benchmarks.md#partials-spaced-out-on-long-utterances).
    partial_growth: float = 0.0
    first_partial_ms: int = 300  # the first window comes sooner: the user sees text start quickly
    pre_speech_ms: int = 1000  # audio kept before the onset (soft starts, Whisper context)
    # ...but after a short pause, everything since the previous utterance ended, up to this: soft or hoarse
    # speech the VAD hears late (a second or more after it began) is then still in the utterance's audio
    # instead of lost between two finals. It costs the finals lane: off by default
    # (docs/benchmarks.md#unscripted-speech). 0: pre_speech_ms always.
    pre_resume_ms: int = 0
    onset_ms: int = 64  # consecutive speech needed to open an utterance
    min_speech_ms: int = 160  # shorter blips are dropped (a short "yes" must not be)
    tail_pad_ms: int = 200  # silence kept after the last speech frame
    # Once the tail pad of silence has passed, the would-be final's audio is complete: send it ahead as a
    # speculative segment so STT can decode it (at final quality) while the endpoint silence runs out.
    speculate: bool = True
    vad_reset_ms: int = 1000  # a pause this long resets the VAD's recurrent state (and re-reads the pre-roll)

    def frames(self, ms: float) -> int:
        return max(1, round(ms / 1000 / FRAME_S))


@dataclass(frozen=True)
class Cut:
    final: bool
    utterance_id: int
    audio: np.ndarray  # float32, 16 kHz
    start: float  # stream seconds (includes pre-roll)
    end: float
    speech_end_wall: float
    speech_start: float  # stream seconds of the onset
    endpoint: Endpoint = Endpoint.NONE
    speculative: bool = False  # the audio of a final that may follow (same samples), not a result of its own


class UtteranceSegmenter:
    def __init__(self, vad: VadStream, config: SegmenterConfig | None = None) -> None:
        self.vad = vad
        self.cfg = cfg = config or SegmenterConfig()
        self.state = State.INACTIVE
        self._lookback = cfg.frames(cfg.cap_lookback_s * 1000)
        self._pad = cfg.frames(cfg.tail_pad_ms) if cfg.tail_pad_ms else 0
        self._session = self._wanted_session = (0, 0.0)  # per-session endpointing (AudioChunk's; 0: the config's)
        self._thresholds()
        self._gap_db = cfg.gap_db
        self._gap_db_min = min(cfg.gap_db, cfg.gap_db_min)
        self._partial = cfg.frames(cfg.partial_every_ms)
        self._growth = cfg.partial_growth
        self._first_partial = cfg.frames(min(cfg.first_partial_ms, cfg.partial_every_ms))
        self._onset_frames = cfg.frames(cfg.onset_ms)
        self._min_speech = cfg.frames(cfg.min_speech_ms)
        self._reset_after = cfg.frames(cfg.vad_reset_ms)
        self._quiet_run = 0  # consecutive non-speech frames while INACTIVE
        self._pending = np.zeros(0, dtype=np.float32)
        self._n = 0  # frames consumed so far (stream clock)
        self._pre_frames = cfg.frames(cfg.pre_speech_ms)
        self._pre: deque[tuple[np.ndarray, float]] = deque(
            maxlen=max(self._pre_frames, cfg.frames(cfg.pre_resume_ms) if cfg.pre_resume_ms else 0))
        self._pre_whole = True  # the pre-roll reaches back to the previous utterance's end (or the stream's start)
        self._onset_run = 0
        self.utterance_id = 0
        self._reset_utterance()

    def _thresholds(self) -> None:
        """The frame counts that end an utterance, from the config and the session's endpointing. A session's
        `max_utterance_s` scales the continuous-speech phases (shrink_after_s, soft_max_s) with it, so a short cap
        still ends long speech at its gaps rather than at the cap's forced cut."""
        cfg = self.cfg
        endpoint_ms, max_s = self._session
        lo, hi = MAX_UTTERANCE_S_RANGE
        max_s = min(max(max_s, lo), hi) if max_s else cfg.max_utterance_s
        scale = max_s / cfg.max_utterance_s
        self._max = cfg.frames(max_s * 1000)
        self._silence_ends = endpoint_ms != NO_ENDPOINT
        if not self._silence_ends:  # only the cap, a flush or stop end an utterance: no soft phase, no gaps
            self._endpoint = self._endpoint_min = self._gap = self._gap_min = self._max + 1
            self._soft = self._shrink_from = 0
            self._speculate = False  # no pause-ended final would reuse it
            return
        lo_ms, hi_ms = ENDPOINT_MS_RANGE
        self._endpoint = cfg.frames(min(max(endpoint_ms, lo_ms), hi_ms) if endpoint_ms else cfg.endpoint_ms)
        soft = cfg.soft_max_s * scale if 0 < cfg.soft_max_s < cfg.max_utterance_s else 0.0
        self._soft = cfg.frames(soft * 1000) if soft else 0
        self._shrink_from = min(cfg.frames(cfg.shrink_after_s * scale * 1000), self._soft) if soft else 0
        self._endpoint_min = min(self._endpoint, cfg.frames(cfg.endpoint_min_ms)) if soft else self._endpoint
        self._gap = min(self._endpoint_min, cfg.frames(cfg.gap_ms)) if soft else self._endpoint
        self._gap_min = min(self._gap, cfg.frames(cfg.gap_min_ms)) if soft else self._endpoint
        # An endpoint shorter than the tail pad ends the utterance before a speculative cut is due: none is sent.
        self._speculate = cfg.speculate and self._pad > 0

    def endpointing(self, endpoint_ms: int = 0, max_utterance_s: float = 0.0) -> None:
        """The session's endpointing as its latest chunk carries it (0: the config's; `endpoint_ms` NO_ENDPOINT:
        pauses never end an utterance). Applied now when no utterance is open, else when the open one ends: the
        open one keeps the thresholds it started with, and with them any speculative cut already sent."""
        self._wanted_session = (endpoint_ms, max_utterance_s)
        if not self.is_open:
            self._adopt()

    def _adopt(self) -> None:
        if self._wanted_session != self._session:
            self._session = self._wanted_session
            self._thresholds()

    def _reset_utterance(self) -> None:
        self._frames: list[np.ndarray] = []
        self._walls: list[float] = []
        self._energy: list[float] = []
        self._start = 0  # absolute frame index of self._frames[0]
        self._onset_at = 0  # absolute frame index where speech was detected
        self._last_speech = -1  # absolute frame index
        self._speech_frames = 0
        self._silence = 0
        self._quiet = 0  # consecutive frames that are silence or far below the utterance's level
        self._since_partial = 0
        self._partials = 0

    @property
    def frames_consumed(self) -> int:
        return self._n

    @property
    def is_open(self) -> bool:
        return self.state is not State.INACTIVE

    @property
    def needed_frame(self) -> int:
        """The oldest frame a replay must see again to rebuild this state: the open utterance's first frame
        (its pre-roll included), else the start of the pre-roll kept in silence. Audio before it is done with."""
        return self._start if self.is_open else self._n - len(self._pre)

    def restore(self, utterance_id: int, frames: int) -> None:
        """Continue a session another process segmented: its utterance numbering and stream clock."""
        self.utterance_id = utterance_id
        self._n = frames

    # ------------------------------------------------------------------ input
    def push(self, samples: np.ndarray, wall: float) -> list[Cut]:
        buf = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        usable = len(buf) - len(buf) % FRAME
        self._pending = buf[usable:]
        cuts: list[Cut] = []
        for i in range(0, usable, FRAME):
            cuts.extend(self._frame(buf[i : i + FRAME], wall))
        return cuts

    def flush(self, wall: float) -> list[Cut]:
        """End of stream: the partial frame is zero-padded and any open utterance is finalised with every
        sample up to the end (words right before `stop` are kept), speculative cuts left out."""
        cuts: list[Cut] = []
        if len(self._pending):
            frame = np.zeros(FRAME, dtype=np.float32)
            frame[: len(self._pending)] = self._pending
            self._pending = np.zeros(0, dtype=np.float32)
            cuts.extend(c for c in self._frame(frame, wall) if not c.speculative)
        if self.state is State.INACTIVE and self._onset_run:  # speech began in the last frames before `stop`
            self._open(self._n - 1)
        if self.state is not State.INACTIVE:
            cuts.extend(self._finalise(Endpoint.STOP))
        return cuts

    def force_end(self) -> list[Cut]:
        """The client wants its final now (a voice agent's turn ended): the open utterance ends here with every
        sample so far, mid-word if need be; the next speech opens a new one, so nothing is lost or doubled. The
        sub-frame remainder waits for the next audio (at most one frame; it belongs to what follows)."""
        if self.state is State.INACTIVE and self._onset_run:  # speech was just beginning
            self._open(self._n - 1)
        if self.state is State.INACTIVE:
            return []
        return self._finalise(Endpoint.FLUSH)

    # ------------------------------------------------------------------ machine
    def _frame(self, frame: np.ndarray, wall: float) -> list[Cut]:
        idx = self._n
        self._n += 1
        speech = self.vad.speech(frame, self.state is not State.INACTIVE)
        if self.state is State.INACTIVE:
            self._keep_pre(frame, wall)
            self._onset_run = self._onset_run + 1 if speech else 0
            self._quiet_run = 0 if speech else self._quiet_run + 1
            if self._quiet_run == self._reset_after:
                self._reread()
            if self._onset_run >= self._onset_frames:
                self._open(idx)
            return []

        self._append(frame, wall)
        if speech:
            self.state = State.ACTIVE
            self._silence = 0
            self._last_speech = idx
            self._speech_frames += 1
        else:
            self.state = State.SILENCE
            self._silence += 1
        self._since_partial += 1

        needed, kind = self._pause_needed()
        if kind is Endpoint.GAP:
            self._quiet = self._quiet + 1 if not speech or self._dip() else 0
        if (self._quiet if kind is Endpoint.GAP else self._silence) >= needed:
            return self._finalise(kind)
        if len(self._frames) >= self._max:
            if not self._silence_ends and self._silence >= max(1, self._pad):
                # No silence endpoint, and the cap falls in a pause: end at the pause, not with a final of silence
                # and an utterance kept open over nothing.
                return self._finalise(Endpoint.MAX_DURATION)
            return self._cut_at_quietest()
        if self._speculate and self._silence == self._pad and self._wanted():
            # Exactly the samples _finalise keeps if the silence lasts: STT can reuse the decode.
            return [dataclasses.replace(self._cut(len(self._frames), final=False, end_frame=self._last_speech + 1,
                                                  endpoint=Endpoint.SILENCE), speculative=True)]
        due = self._first_partial if self._partials == 0 else max(
            self._partial, int(self._growth * len(self._frames)))
        if self._since_partial >= due and self.state is State.ACTIVE:
            self._since_partial = 0
            self._partials += 1
            return [self._cut(len(self._frames), final=False, end_frame=idx + 1, partial=True)]
        return []

    def _reread(self) -> None:
        """A pause: forget the VAD's state and read the pre-roll again with the fresh one. The old state
        carries the level of the speech before the pause; a quiet speaker who starts right after a loud one
        is silence to it (measured: a recording 40 dB quieter, 150 ms after a loud one, unheard for 2 s), and
        their first words would be older than the pre-roll by the time the fresh state hears them."""
        self.vad.reset()
        self._onset_run = 0
        for frame, _ in list(self._pre)[-self._pre_frames:]:
            self._onset_run = self._onset_run + 1 if self.vad.speech(frame, False) else 0
        if self._onset_run:
            self._quiet_run = 0

    def _pause_needed(self) -> tuple[int, Endpoint]:
        """Frames of silence that end the utterance now, and the endpoint they make.

        The clock is the speech so far (onset → now, pre-roll excluded). A speculative cut is sent at
        `tail_pad_ms` of silence whenever more is needed: a final ended by silence ≥ the pad keeps exactly
        the samples up to the last speech frame + pad, the speculative cut's, whichever threshold ends it.
        """
        if not self._soft:
            return self._endpoint, Endpoint.SILENCE
        spoken = self._n - self._onset_at
        if spoken >= self._soft:
            return round(self._gap - self._toward_cap() * (self._gap - self._gap_min)), Endpoint.GAP
        if spoken <= self._shrink_from:
            return self._endpoint, Endpoint.SILENCE
        frac = (spoken - self._shrink_from) / max(1, self._soft - self._shrink_from)
        return round(self._endpoint - frac * (self._endpoint - self._endpoint_min)), Endpoint.SILENCE

    def _toward_cap(self) -> float:
        """0 at soft_max_s of speech, 1 at the cap: how far the gap's length and dip have relaxed."""
        past = max(0, self._n - self._onset_at - self._soft)  # frames since soft_max_s
        return min(1.0, past / max(1, past + self._max - len(self._frames)))

    def _dip(self) -> bool:
        """The last frame is `gap_db` below the utterance's loud frames (its 90th percentile): a breath
        between words that the VAD's hangover still calls speech, not the inside of a word. Nearer the cap
        the dip needed shrinks toward `gap_db_min`: the cap would cut anyway, at its quietest point."""
        db = self._gap_db - self._toward_cap() * (self._gap_db - self._gap_db_min)
        loud = float(np.percentile(self._energy, 90))
        return self._energy[-1] < loud * 10 ** (-db / 20)

    def _keep_pre(self, frame: np.ndarray, wall: float) -> None:
        if len(self._pre) == self._pre.maxlen:
            self._pre_whole = False  # the pause outlasts the pre-roll: a fresh start, pre_speech_ms of it
        self._pre.append((frame, wall))

    def _open(self, idx: int) -> None:
        self.utterance_id += 1
        self._reset_utterance()
        pre = list(self._pre) if self._pre_whole else list(self._pre)[-self._pre_frames:]
        self._start = idx - len(pre) + 1
        self._onset_at = idx - self._onset_run + 1
        for frame, wall in pre:
            self._append(frame, wall)
        self._pre.clear()
        self._last_speech = idx
        self._speech_frames = self._onset_run
        self._since_partial = self._onset_run
        self._onset_run = 0
        self.state = State.ACTIVE

    def _append(self, frame: np.ndarray, wall: float) -> None:
        self._frames.append(frame)
        self._walls.append(wall)
        self._energy.append(float(np.sqrt(np.mean(frame * frame)) + 1e-9))

    def _cut(self, upto: int, final: bool, end_frame: int, endpoint: Endpoint = Endpoint.NONE,
             partial: bool = False) -> Cut:
        # A partial is provisional: its pre-roll stays at pre_speech_ms however far back the final's reaches, so
        # a longer pre-roll costs the partial lane nothing.
        first = max(0, self._onset_at - self._pre_frames - self._start) if partial else 0
        audio = np.concatenate(self._frames[first:upto]) if upto > first else np.zeros(0, dtype=np.float32)
        wall_idx = min(max(0, end_frame - 1 - self._start), len(self._walls) - 1)
        return Cut(
            final=final,
            utterance_id=self.utterance_id,
            audio=audio,
            start=(self._start + first) * FRAME_S,
            end=end_frame * FRAME_S,
            speech_end_wall=self._walls[wall_idx],
            speech_start=self._onset_at * FRAME_S,
            endpoint=endpoint,
        )

    def _wanted(self) -> bool:
        return self._speech_frames >= self._min_speech or self._partials > 0

    def _finalise(self, endpoint: Endpoint) -> list[Cut]:
        """Close the utterance at its last speech frame (+ pad); trailing silence seeds pre-roll.
        At `stop` nothing follows, so every sample is kept: the VAD may have missed a soft last word; at a flush
        the client said the utterance ends here, so the same."""
        keep = min(len(self._frames), self._last_speech - self._start + 1 + self._pad)
        if endpoint in (Endpoint.STOP, Endpoint.FLUSH):
            keep = len(self._frames)
        cuts = [self._cut(keep, final=True, end_frame=self._last_speech + 1, endpoint=endpoint)] \
            if self._wanted() else []
        self._pre_whole = True
        for frame, wall in zip(self._frames[keep:], self._walls[keep:], strict=True):
            self._keep_pre(frame, wall)
        self._reset_utterance()
        self.state = State.INACTIVE
        self._onset_run = 0
        self._adopt()
        return cuts

    def _cut_at_quietest(self) -> list[Cut]:
        """Cap reached with no gap: split at the lowest-energy point of the last `cap_lookback_s` (at most the
        later half), so the final ends close to now; keep the rest open."""
        energy = np.asarray(self._energy)
        window = 5
        smooth = np.convolve(energy, np.ones(window) / window, mode="same")
        lo = max(len(smooth) // 2, len(smooth) - self._lookback)
        split = lo + int(np.argmin(smooth[lo:]))
        split = max(1, min(split, len(self._frames) - 1))
        head = self._cut(split, final=True, end_frame=self._start + split, endpoint=Endpoint.MAX_DURATION)
        rest_frames = self._frames[split:]
        rest_walls = self._walls[split:]
        rest_energy = self._energy[split:]
        new_start = self._start + split
        last_speech = self._last_speech
        state = self.state
        silence = self._silence
        self.utterance_id += 1
        self._reset_utterance()
        self._frames, self._walls, self._energy = rest_frames, rest_walls, rest_energy
        self._start = new_start
        self._onset_at = new_start
        self._last_speech = max(last_speech, new_start)
        self._speech_frames = len(rest_frames)  # continuing speech: do not drop it as a blip
        self._since_partial = 0
        self._silence = silence
        self.state = state
        # The partials shown so far ran past the cut: re-show the remainder under its own id at once.
        self._partials = 1
        self._adopt()  # the remainder is a new utterance: the session's latest endpointing applies to it
        tail = self._cut(len(self._frames), final=False, end_frame=self._start + len(self._frames))
        return [head, tail]
