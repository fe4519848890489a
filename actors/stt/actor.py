"""STT actor: finals before partials, stale partials skipped, one model call per batch."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from actors.runtime import listeners, memory, metrics, pools, settings
from actors.runtime.actor import Actor, RuntimeSettings, heartbeats
from actors.runtime.bus import Bus
from actors.runtime.consumer import Delivery, PullLoop
from actors.runtime.executor import BoundedExecutor
from actors.stt import vocabulary
from actors.stt.engine import WhisperEngine, WhisperOptions
from actors.stt.finals import EarlyDecodes, LeftContexts, PromptContext, early_key
from actors.stt.guards import looped, repeated_edge, repeated_head
from actors.stt.interface import SpeechToText, SttRequest, SttResult, WordTiming
from actors.stt.langlock import LanguageLock
from actors.stt.load import FinalLoad, partial_pause
from actors.stt.models import resolve
from actors.stt.support import MARGIN_S, supported
from schemas import Endpoint, ResultKind, Segment, SegmentKind, Transcript, TranslationCatalog, Word, stream_of
from schemas.translation import speech_wanted

log = logging.getLogger("tolk.stt")

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
LATENCY = Histogram("tolk_stt_latency_seconds", "End of speech (the segment's end, edge clock) to its transcript "
                    "stored, by kind and STT pool.", ["kind", "pool"], buckets=LATENCY_BUCKETS)
BATCH = Histogram("tolk_stt_batch_size", "Segments per model call, by lane and STT pool.", ["kind", "pool"],
                  buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32))
RTF = Histogram("tolk_stt_real_time_factor", "Model seconds per audio second of a call, by lane and STT pool.",
                ["kind", "pool"], buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0))
AUDIO_SECONDS = Counter("tolk_stt_audio_seconds", "Seconds of audio transcribed, by lane and STT pool.",
                        ["kind", "pool"])
BUSY = Counter("tolk_stt_busy_seconds", "Seconds each lane spent in model calls, by lane and STT pool: its rate is "
               "the lane's utilisation (near 1 for the final lane: the pool needs more replicas).", ["kind", "pool"])
SPECULATIVE = Counter("tolk_stt_speculative", "Speculative segments (a final's audio sent ahead during the endpoint "
                      "silence) by outcome: decoded early, used by their final, or skipped undecoded.",
                      ["pool", "outcome"])
LEFT_CONTEXT = Counter("tolk_stt_left_context", "Final decodes (early ones included) by left context: read after "
                       "the end of the session's previous final, dropped by the engine (no room in the encoder "
                       "window, or redone without it), left out for the final lane's load, or none to read (a "
                       "session's first final, after a pause over 2 s, a language change).", ["pool", "outcome"])
FINAL_TIERS = Counter("tolk_stt_final_decodes", "Finals decoded (early decodes included) by quality tier as the "
                      "final lane's load chose it: full (beam, 30 s window), loaded (beam, fitted window), busy "
                      "(greedy: the overload valve; many of these mean the pool needs more replicas).",
                      ["pool", "tier"])
FULL_WINDOW_EXTRA = Gauge("tolk_stt_full_window_extra_seconds", "What Whisper's full 30 s window costs each final "
                          "call over the loaded tier's fitted one (encoder seconds, measured at start where "
                          "TOLK_FULL_WINDOW_EXTRA_S is set; above it finals never use the full window).", ["pool"])
POOL_INFO = Gauge("tolk_stt_pool_info", "The STT pool this process serves (TOLK_STT_POOL): its model and "
                  "languages, always 1.", ["pool", "model", "languages"])

UNSUPPORTED = Counter("tolk_stt_unsupported_words", "Words of finals dropped as unsupported by the audio: outside "
                      "the VAD's speech and in quiet audio (actors/stt/support.py).", ["pool"])
REPEATED = Counter("tolk_stt_repeated_words", "Words dropped from the head of finals because the session's previous "
                   "finals had just said them (Whisper copying its prompt or re-reading its left context).", ["pool"])
SPEECH_TRANSLATIONS = Counter("tolk_stt_speech_translations", "Finals also translated into English by Whisper's "
                              "translate task (a second decode of their audio), by STT pool.", ["pool"])
SPEECH_TRANSLATION_SECONDS = Counter("tolk_stt_speech_translation_seconds", "Seconds of final-lane model calls spent "
                                     "on Whisper's translate task, by STT pool.", ["pool"])
UNSPACED = frozenset({"zh", "ja", "th", "lo", "my", "yue", "km", "bo"})  # words are not joined by spaces

LOOPED = Counter("tolk_stt_looped_words", "Words dropped from finals as a phrase Whisper looped on (said again at "
                 "once, in more words than the speech could hold), by STT pool.", ["pool"])
PARTIAL_YIELD = Counter("tolk_stt_partial_yield_seconds", "Seconds the partial lane paused for the final lane's load "
                        "(partials thinned so finals keep their pace), by STT pool.", ["pool"])
STREAM = "TOLK_SEGMENTS"
LOAD_WINDOW_S = 10.0  # the final lane's load is judged over this much recent time


@dataclass
class SttSettings:
    """Env: TOLK_MODEL, TOLK_DEVICE, TOLK_BATCH_SIZE, ... (docs/configuration.md#configuration)."""

    model: str = "tiny.en"  # tiny.en | base (bundled) | a faster-whisper name | org/repo | /path/to/folder
    # The STT pool served (TOLK_STT_POOL; actors/runtime/pools.py): its model replaces `model` above.
    stt_pool: str = ""
    model_cache: str = "~/.cache/tolk/models"  # base is assembled here; hub models are cached/downloaded here
    model_download: bool = True  # false: hub models only from a cache, never downloaded
    device: str = "auto"
    compute_type: str = "auto"
    cpu_threads: int = 0  # 0 = auto: cores / workers (oversubscribing cores hurts latency)
    workers: int = 2  # divides the cores into threads per model call (cpu_threads = 0)
    # Model calls the final lane may run at once. A final that arrives while an early decode (or another
    # final's batch) is in the lane starts at once instead of waiting for it; early decodes only start while
    # every slot is free, so one is always left for a final.
    final_slots: int = 2
    batch_size: int = 8  # finals per model call
    # Partials per model call: a final that arrives mid-batch waits for it, so keep partial calls short.
    partial_batch_size: int = 3
    # Finals get the best decode the time budget allows, chosen per call by the final lane's load: beam search
    # with the session's previous text as prompt over Whisper's full 30 s window while the lane was busy less
    # than full_window_below of the last 10 s, over a fitted loaded_window_s above that, and greedy over
    # busy_window_s once busy_batch finals wait: an overload valve only, as greedy decoding costs base a fifth
    # more errors (python -m loadtest.levers) and a window under 15 s makes tiny.en invent words. `speculate`
    # decodes a final's audio during the endpoint silence, so most finals are ready when the pause ends.
    beam_size: int = 5
    final_window_s: float = 30.0
    full_window_below: float = 0.3
    # ... and, where set, only while the full window costs at most this many encoder seconds per call more than
    # the fitted one (measured at start). Off by default: on CPU the full window buys words at a latency price
    # (docs/benchmarks.md#the-full-window-at-low-load); a GPU pays a few ms either way.
    full_window_extra_s: float = math.inf
    loaded_window_s: float = 15.0
    busy_batch: int = 6
    busy_beam_size: int = 1
    busy_window_s: float = 15.0
    prompt_tokens: int = 128  # previous-text prompt for finals (0: none); reset when the language changes
    # A final is read as the continuation of the session's previous one: up to this many seconds of its audio
    # go ahead of the final's in the encoder window (only where the window has room), its words forced as the
    # decoder's prefix. Offline Whisper reads across a pause in one window; without this a sentence split at a
    # pause restarts with a guess. 0: off. Kept short, as CTranslate2 forces a prefix one beam step per token,
    # and left out once the finals slots were busy left_context_below seconds per second over the last 10 s.
    left_context_s: float = 2.0
    left_context_below: float = 0.6
    speculate: bool = True  # decode a final's audio during the endpoint silence, while the lane is idle
    partial_window_s: float = 6.0  # partials are provisional: greedy over a shorter (cheaper) window
    # Whisper reads quiet audio raised to peak at level_dbfs (by at most level_max_gain_db; 0: off): speech peaking
    # at -50 dBFS otherwise loses words, offline too (docs/benchmarks.md#quiet-recordings).
    level_dbfs: float = -10.0
    level_max_gain_db: float = 40.0
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    compression_threshold: float = 2.4
    # language "auto": lock a session's language after lang_lock_after finals detected with ≥ lang_lock_prob;
    # a pause of lang_reopen_pause_s re-opens detection.
    lang_lock_prob: float = 0.8
    lang_lock_after: int = 2
    lang_reopen_pause_s: float = 10.0
    in_progress_s: float = 5.0  # held segments are marked in progress this often (keep it under the ack wait)
    # Partials yield to finals as the final lane fills (actors/stt/load.py): above partial_thin_above busy, the
    # partial lane pauses after each call, up to partial_yield_max times the call at busy 1, except for an
    # utterance that shows nothing yet. 0: never.
    partial_thin_above: float = 0.5
    partial_yield_max: float = 3.0
    # A multilingual model also translates finals into English itself (Whisper's translate task: a second decode of
    # the final's audio in the finals lane), for streams whose listeners want a target the translators route
    # through it (engine `whisper`: X→en, or a pivot X→en→pt). Read every speech_translate_poll_s from their
    # heartbeats. false: this pool announces no speech translation.
    speech_translate: bool = True
    speech_translate_poll_s: float = 5.0
    # The translate task's encoder window is never fitted under this many seconds (the final's own window where
    # wider). Over the loaded tier's 15 s it read 20 FLEURS clips in 4 languages ~1 chrF worse than over 20 s, at
    # ~0.2 s less CPU per final (python -m loadtest.translate --windows); the full 30 s read them about as well as
    # 20 s and costs ~0.8 s more.
    speech_translate_window_s: float = 20.0


def _with_words(r: SttResult, words: list[WordTiming]) -> SttResult:
    """`r` with these words (some dropped or respelled), its text made of them."""
    joiner = "" if r.language in UNSPACED else " "
    return dataclasses.replace(r, text=joiner.join(w.word for w in words), words=words)


def transcript_subject(seg: Segment) -> str:
    return f"tolk.transcript.{seg.partition}.{seg.session_id}"


class SttActor(Actor):
    name = "stt"

    def __init__(self, bus: Bus, runtime: RuntimeSettings, cfg: SttSettings, pool: pools.Pool | None = None) -> None:
        super().__init__(bus, runtime)
        self.cfg = cfg
        # One pool per process: its model and its pair of durables (TOLK_STT_POOLS / TOLK_STT_POOL).
        self.pool = pool or pools.load().serving(cfg.stt_pool)
        cfg.model = self.pool.model
        POOL_INFO.labels(self.pool.name, self.pool.model, ",".join(self.pool.languages)).set(1)
        self.engine: SpeechToText | None = None
        # Two lanes: finals never wait for a partial batch to finish. The partial lane makes one model call at a
        # time, the final lane up to `final_slots`.
        self._slots = max(1, cfg.final_slots)
        self.final_lane = BoundedExecutor(workers=self._slots, backlog=0, name="whisper-final")
        self.partial_lane = BoundedExecutor(workers=1, backlog=0, name="whisper-partial")
        self._finals: deque[Delivery[Segment]] = deque()
        self._partials: deque[Delivery[Segment]] = deque()
        self._inflight: list[Delivery[Segment]] = []  # in a model call right now
        self._final_steps: set[asyncio.Task[None]] = set()  # final-lane calls running (≤ final_slots)
        self._early_running: set[tuple[str, int, int, str]] = set()  # early decodes in a call: finals wait
        self._wake_final = asyncio.Event()
        self._wake_partial = asyncio.Event()
        self._space = asyncio.Condition()
        self._stopping = False
        self.langlock = LanguageLock(cfg.lang_lock_prob, cfg.lang_lock_after, cfg.lang_reopen_pause_s)
        # (session, utterance) → newest partial seq shown (with text), or -1 once finalised.
        self._progress: OrderedDict[tuple[str, int], int] = OrderedDict()
        self.context = PromptContext()
        self.left = LeftContexts(self.cfg.left_context_s)
        self._full_window = True  # False once start() finds the full window too dear here
        self.load = FinalLoad()  # the final lane's measured load: tiers, partial thinning, the edge's admission
        self._early: EarlyDecodes[tuple[SttResult, int]] = EarlyDecodes()  # (result, speculative seq)
        self.trimmer = memory.Trimmer()
        self._stats: dict[str, float] = dict.fromkeys(("batches", "items", "busy_s", "audio_s", "stale"), 0.0)
        self._stats_at = time.monotonic()
        self.listeners = listeners.ListenerView()  # whose targets want Whisper's English (speech_translate)
        self._catalogs: list[TranslationCatalog] = []
        self._loops = {
            "final": PullLoop(bus.js, STREAM, pools.durable("final", self.pool.name), Segment, self._enqueue_final,
                              batch=cfg.batch_size),
            "partial": PullLoop(bus.js, STREAM, pools.durable("partial", self.pool.name), Segment,
                                self._enqueue_partial, batch=cfg.batch_size),
        }

    def info(self) -> dict[str, str]:
        """In the heartbeat: `tolk status` shows instances, model and languages per pool."""
        info = {"pool": self.pool.name, "model": self.pool.model, "languages": ",".join(self.pool.languages),
                **self.load.announce()}
        if self._translates:
            info["speech_translation"] = "en"  # Whisper's translate task (actors/translator/speech.py)
        return info

    @property
    def _translates(self) -> bool:
        return self.cfg.speech_translate and self.engine is not None and self.engine.multilingual

    async def _follow_targets(self) -> None:
        """Which streams want Whisper's English: their listeners' targets (KV `tolk_listeners`, as the translator
        reads them) and which pairs the translators route through it (their heartbeats)."""
        kv = await self.bus.kv(listeners.BUCKET)
        watch = asyncio.create_task(self.listeners.watch(kv), name="stt.listeners")
        try:
            while True:
                try:
                    self._catalogs = [b.translation for b in await heartbeats(self.bus)
                                      if b.actor == "translator" and b.ready and b.translation is not None]
                except Exception as exc:
                    log.warning("reading translator heartbeats failed: %s", exc)
                await asyncio.sleep(max(0.5, self.cfg.speech_translate_poll_s))
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    def _wants_english(self, seg: Segment, language: str) -> bool:
        return self._translates and speech_wanted(self._catalogs, language, self.listeners.targets(stream_of(seg)))

    async def start(self) -> None:
        # In a thread: a first-use download can take minutes, and the loop must keep /healthz and NATS alive.
        path = await asyncio.to_thread(resolve, self.cfg.model, self.cfg.model_cache, self.cfg.model_download)
        options = WhisperOptions(
            device=self.cfg.device,
            compute_type=self.cfg.compute_type,
            cpu_threads=self.cfg.cpu_threads or max(1, (os.cpu_count() or 2) // self.cfg.workers),
            workers=self._slots + 1,  # a CTranslate2 replica per concurrent call
            beam_size=self.cfg.beam_size,
            prompt_tokens=self.cfg.prompt_tokens,
            level_dbfs=self.cfg.level_dbfs,
            level_max_gain_db=self.cfg.level_max_gain_db,
            no_speech_threshold=self.cfg.no_speech_threshold,
            logprob_threshold=self.cfg.logprob_threshold,
            compression_threshold=self.cfg.compression_threshold,
        )
        self.engine = await self.final_lane.run(WhisperEngine, path, options)
        # Warm-up: the first call pays one-off allocation costs; keep them out of user latency.
        warm = [SttRequest(np.zeros(16000, np.float32), "en")]
        await asyncio.gather(
            self.final_lane.run(self.engine.transcribe_batch, warm),
            self.partial_lane.run(self.engine.transcribe_batch, warm),
        )
        await self._price_full_window(self.engine)

    async def _price_full_window(self, engine: SpeechToText) -> None:
        """Whether finals may use the full 30 s window at all here: only where it costs little over the
        loaded tier's window, as its words are worth little more (docs/benchmarks.md#the-full-window-at-low-load)."""
        if self.cfg.final_window_s <= self.cfg.loaded_window_s or math.isinf(self.cfg.full_window_extra_s):
            return
        full = await self.final_lane.run(engine.encode_seconds, self.cfg.final_window_s)
        fitted = await self.final_lane.run(engine.encode_seconds, self.cfg.loaded_window_s)
        extra = max(0.0, full - fitted)
        FULL_WINDOW_EXTRA.labels(self.pool.name).set(extra)
        self._full_window = extra <= self.cfg.full_window_extra_s
        log.info("pool %s: the full %.0f s window costs %.3f s more per final call than %.0f s: %s", self.pool.name,
                 self.cfg.final_window_s, extra, self.cfg.loaded_window_s,
                 "used while the finals lane has headroom" if self._full_window
                 else f"not used (over TOLK_FULL_WINDOW_EXTRA_S={self.cfg.full_window_extra_s:g})")

    # ------------------------------------------------------------------ intake
    async def _wait_space(self, queue: deque[Delivery[Segment]]) -> None:
        async with self._space:
            await self._space.wait_for(lambda: len(queue) < self.cfg.batch_size or self._stopping)

    async def _enqueue_final(self, items: list[Delivery[Segment]]) -> None:
        self._finals.extend(items)
        self._wake_final.set()
        await self._wait_space(self._finals)

    async def _enqueue_partial(self, items: list[Delivery[Segment]]) -> None:
        self._partials.extend(items)
        self._wake_partial.set()
        await self._wait_space(self._partials)

    # ------------------------------------------------------------------ work
    async def run(self) -> None:
        fetchers = [asyncio.create_task(loop.run(), name=f"stt.fetch.{k}") for k, loop in self._loops.items()]
        lanes = [
            asyncio.create_task(self._final_lane(), name="stt.finals"),
            asyncio.create_task(self._partial_lane(), name="stt.partials"),
        ]
        fetchers.append(asyncio.create_task(self._keep_alive(), name="stt.in-progress"))
        if self._translates:
            fetchers.append(asyncio.create_task(self._follow_targets(), name="stt.targets"))
        try:
            await asyncio.gather(*lanes)
        finally:
            for loop in self._loops.values():
                loop.stop()
            async with self._space:
                self._space.notify_all()
            for task in fetchers + lanes:
                task.cancel()
            await asyncio.gather(*fetchers, *lanes, return_exceptions=True)

    async def _keep_alive(self) -> None:
        """Segments held here (queued or in a model call) are marked in progress, so a short ack wait can
        redeliver a crashed replica's work quickly without redelivering a busy replica's."""
        while True:
            await asyncio.sleep(self.cfg.in_progress_s)
            for d in [*self._finals, *self._partials, *self._inflight]:
                with contextlib.suppress(Exception):
                    await d.raw.in_progress()

    async def _idle(self, wake: asyncio.Event, pending: bool) -> bool:
        """Wait for this lane's work; False once draining and nothing of it is pending."""
        if self._stopping and not pending:
            return False
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), 1.0)
        return True

    async def _final_lane(self) -> None:
        """Up to final_slots steps at once, each one model call (or finals answered from early decodes)."""
        try:
            while True:
                free = len(self._final_steps) < self._slots
                step = self._final_step(speculative=not self._final_steps) if free and self._finals else None
                if step is not None:
                    task = asyncio.create_task(self._run_step(step), name="stt.final-step")
                    self._final_steps.add(task)
                    task.add_done_callback(self._step_done)
                elif not await self._idle(self._wake_final, bool(self._finals or self._final_steps)):
                    return
        finally:
            for task in self._final_steps:
                task.cancel()
            await asyncio.gather(*self._final_steps, return_exceptions=True)

    async def _run_step(self, step: Coroutine[Any, Any, None]) -> None:
        await step
        await self._made_space()

    def _step_done(self, task: asyncio.Task[None]) -> None:
        """A slot is free: the lane looks at its queue again. A failed step's segments are redelivered after the
        ack wait; its error is logged here, as nothing awaits the task."""
        self._final_steps.discard(task)
        self._wake_final.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("a finals-lane step failed", exc_info=exc)
            metrics.count_error("final_step_failed")

    def _final_step(self, speculative: bool) -> Coroutine[Any, Any, None] | None:
        """The next final-lane call. Its segments leave the queue here, before it runs, so concurrent steps
        never share one.

        Finals first: one decoded early is published at once, the rest decoded at the best quality the
        queue allows; a final whose early decode is in a call waits for it. With no final to take and the lane
        idle (`speculative`), the newest speculative segment of each utterance is decoded."""
        finals = [d for d in self._finals if not d.msg.speculative
                  and self._early_key(d.msg) not in self._early_running][: self.cfg.batch_size]
        if finals:
            utterances = {(d.msg.session_id, d.msg.utterance_id) for d in finals}
            taken = [d for d in self._finals if (d.msg.session_id, d.msg.utterance_id) in utterances]
            for d in taken:
                self._finals.remove(d)
            # a speculative segment whose final is here would never be used
            return self._finals_call(finals, [d for d in taken if d.msg.speculative])
        if not speculative or any(not d.msg.speculative for d in self._finals):
            return None
        newest: dict[tuple[str, int], Delivery[Segment]] = {}
        stale = []
        for d in sorted(self._finals, key=lambda d: d.msg.seq):
            key = (d.msg.session_id, d.msg.utterance_id)
            if key in newest:
                stale.append(newest[key])
            newest[key] = d
        self._finals.clear()
        unused = [k for k in newest if self._progress.get(k) == -1 or not self.cfg.speculate or self._stopping]
        stale += [newest.pop(k) for k in unused]  # superseded, or its final is out
        batch = sorted(newest.values(), key=lambda d: d.msg.speech_end_wall)[: self.cfg.batch_size]
        self._finals.extend(d for d in newest.values() if d not in batch)
        running = {self._early_key(d.msg) for d in batch}
        self._early_running |= running
        return self._early_call(batch, stale, running)

    async def _finals_call(self, finals: list[Delivery[Segment]], skipped: list[Delivery[Segment]]) -> None:
        for d in skipped:
            await self._skip_early(d)
        todo = []
        for d in finals:
            early = self._early.take(self._early_key(d.msg))
            if early is not None:
                SPECULATIVE.labels(self.pool.name, "used").inc()
                await self._show_first_partial(d, *early)
                await self._deliver(d, early[0])
            else:
                todo.append(d)
        if todo:
            waiting = sum(not d.msg.speculative for d in self._finals)
            window, beam, context = self._final_quality(len(todo) + waiting)
            if any(d.msg.endpoint is Endpoint.FLUSH for d in todo):
                # A client waits on this one (a voice agent's turn), and no early decode ran during a pause: the
                # fitted window decodes it in half the full window's time (docs/benchmarks.md#flush).
                window = min(window, self.cfg.loaded_window_s)
            quality = (window, beam, context)
            firsts = self._first_partials(todo)  # published before their finals, so they are shown
            await self._transcribe(self.final_lane, firsts + todo, *quality)

    async def _early_call(self, batch: list[Delivery[Segment]], stale: list[Delivery[Segment]],
                          keys: set[tuple[str, int, int, str]]) -> None:
        try:
            for d in stale:
                await self._skip_early(d)
            if batch:
                await self._transcribe(self.final_lane, batch, *self._final_quality(0))
        finally:
            self._early_running -= keys

    async def _skip_early(self, d: Delivery[Segment]) -> None:
        """A speculative segment nothing will use: settled undecoded."""
        SPECULATIVE.labels(self.pool.name, "skipped").inc()
        with contextlib.suppress(Exception):
            await d.raw.ack()

    def _final_quality(self, waiting: int) -> tuple[float, int, bool]:
        """(encoder window, beam, left context) for the next finals call, by how loaded the final lane is."""
        if waiting >= self.cfg.busy_batch:
            return self.cfg.busy_window_s, self.cfg.busy_beam_size, False
        busy = self.load.busy(LOAD_WINDOW_S)
        full = self._full_window and busy < self.cfg.full_window_below
        window = self.cfg.final_window_s if full else self.cfg.loaded_window_s
        return window, self.cfg.beam_size, busy < self.cfg.left_context_below

    def _tier(self, window_s: float, beam_size: int) -> str:
        if beam_size < self.cfg.beam_size:
            return "busy"
        return "full" if window_s >= self.cfg.final_window_s else "loaded"

    async def _show_first_partial(self, final: Delivery[Segment], early: SttResult, early_seq: int) -> None:
        """An utterance that showed no partial yet shows one before its final, as when the final is decoded
        (_first_partials). A queued partial is answered from the early decode's words within its audio; with
        none queued (still in NATS or in the partial lane, which then comes too late and is dropped), the
        speculative segment's own seq carries the early text as that partial."""
        key = (final.msg.session_id, final.msg.utterance_id)
        if key in self._progress:
            return
        for p in self._first_partials([final]):
            await self._deliver(p, self._prefix(early, p.msg.end - final.msg.start))
            return
        seg = msgspec.structs.replace(final.msg, seq=early_seq, kind=SegmentKind.PARTIAL, speculative=False,
                                      endpoint=Endpoint.NONE)
        await self._deliver(Delivery(seg, final.raw), dataclasses.replace(early, words=[]), ack=False)

    @staticmethod
    def _prefix(result: SttResult, upto: float) -> SttResult:
        """A partial's text from its final's decode: the words that end within the partial's audio."""
        words = [w.word for w in result.words if w.end <= upto]
        return dataclasses.replace(result, text=" ".join(words), words=[], rejected=None)

    def _early_key(self, seg: Segment) -> tuple[str, int, int, str]:
        return early_key(seg, self.langlock.language_for(seg.session_id, seg.language, seg.speech_start))

    async def _partial_lane(self) -> None:
        while True:
            batch = await self._fresh_partials() if self._partials else []
            if batch:
                began = time.monotonic()
                await self._transcribe(self.partial_lane, batch, self.cfg.partial_window_s)
                await self._made_space()
                await self._yield_to_finals(time.monotonic() - began)
            elif not await self._idle(self._wake_partial, False):  # what is queued waits for its final
                return

    async def _yield_to_finals(self, took: float) -> None:
        """Partials thinned by the final lane's load: the pause after a partial call (actors/stt/load.py), cut
        short by a partial of an utterance that shows nothing yet, so first partials keep their pace."""
        pause = partial_pause(took, self.load.busy(LOAD_WINDOW_S), self.cfg.partial_thin_above,
                              self.cfg.partial_yield_max)
        if pause <= 0:
            return
        PARTIAL_YIELD.labels(self.pool.name).inc(pause)
        deadline = time.monotonic() + pause
        while (left := deadline - time.monotonic()) > 0 and not self._stopping:
            if any((d.msg.session_id, d.msg.utterance_id) not in self._progress for d in self._partials):
                return
            self._wake_partial.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_partial.wait(), left)

    async def _made_space(self) -> None:
        async with self._space:
            self._space.notify_all()

    def _first_partials(self, finals: list[Delivery[Segment]]) -> list[Delivery[Segment]]:
        """An utterance that never had a partial shown gets its newest one in the finals' call.

        Otherwise a short utterance under load would show no text until its final; one extra item
        in a batch costs far less than a separate model call.
        """
        keys = {(d.msg.session_id, d.msg.utterance_id) for d in finals}
        newest: dict[tuple[str, int], Delivery[Segment]] = {}
        for d in self._partials:
            key = (d.msg.session_id, d.msg.utterance_id)
            if key in keys and key not in self._progress and (
                key not in newest or newest[key].msg.seq < d.msg.seq
            ):
                newest[key] = d
        for d in newest.values():
            self._partials.remove(d)
        return list(newest.values())

    async def _fresh_partials(self) -> list[Delivery[Segment]]:
        """Newest partial per utterance, oldest first; superseded ones are acked without a transcript.

        An utterance whose final is queued before it showed any text keeps its newest partial in the queue:
        the finals' call decodes it (_first_partials), so the user sees the utterance start even under load."""
        newest: dict[tuple[str, int], Delivery[Segment]] = {}
        for_final: dict[tuple[str, int], Delivery[Segment]] = {}
        stale: list[Delivery[Segment]] = []
        final_keys = {(d.msg.session_id, d.msg.utterance_id) for d in self._finals if not d.msg.speculative}
        while self._partials:
            d = self._partials.popleft()
            key = (d.msg.session_id, d.msg.utterance_id)
            done = self._progress.get(key)
            if done == -1 or (done is not None and done >= d.msg.seq):
                stale.append(d)
                continue
            if key in final_keys and done is not None:
                stale.append(d)  # a partial was shown: the final supersedes this one
                continue
            pick = for_final if key in final_keys else newest
            prev = pick.get(key)
            if prev is not None:
                if prev.msg.seq > d.msg.seq:
                    stale.append(d)
                    continue
                stale.append(prev)
            pick[key] = d
        self._partials.extend(for_final.values())
        self._stats["stale"] += len(stale)
        for d in stale:  # superseded: nothing waits for it, so it is settled without a transcript
            with contextlib.suppress(Exception):
                await d.raw.ack()
        # Oldest first: every session's partials advance, none starves behind chattier ones.
        ordered = sorted(newest.values(), key=lambda d: d.msg.speech_end_wall)
        for d in reversed(ordered[self.cfg.partial_batch_size :]):
            self._partials.appendleft(d)
        return ordered[: self.cfg.partial_batch_size]

    def _request(self, seg: Segment, context: bool = False) -> SttRequest:
        language = self.langlock.language_for(seg.session_id, seg.language, seg.speech_start)
        final = seg.kind is SegmentKind.FINAL
        left = None
        if final:
            if not self.left.has(seg.session_id, language, seg.start):
                LEFT_CONTEXT.labels(self.pool.name, "none").inc()
            elif not context:
                LEFT_CONTEXT.labels(self.pool.name, "load").inc()
            else:  # counted by what the engine made of it, once decoded (_transcribe)
                left = self.left.left(seg.session_id, language, seg.start)
        return SttRequest(
            audio=np.frombuffer(seg.audio, "<i2").astype(np.float32) / 32768.0,
            language=language,
            word_timestamps=final,
            # partials stay cheap; a session's own text wins over its initial prompt (OpenAI `prompt`)
            prompt=(self.context.prompt(seg.session_id, language) or seg.prompt) if final else "",
            context=left if context else None,
            hotwords=vocabulary.glossary(seg.vocabulary),
        )

    async def _transcribe(self, lane: BoundedExecutor, batch: list[Delivery[Segment]], window_s: float,
                          beam_size: int = 1, context: bool = False) -> None:
        assert self.engine is not None
        requests = [self._request(d.msg, context) for d in batch]
        began = time.monotonic()
        kind = "final" if lane is self.final_lane else "partial"
        self._inflight.extend(batch)
        try:
            results = await lane.run(self.engine.transcribe_batch, requests, window_s, beam_size)
            busy, audio = time.monotonic() - began, sum(len(r.audio) for r in requests) / 16000
            if lane is self.final_lane:  # early decodes too: a final arriving meanwhile waits for them
                self.load.record(busy, {d.msg.session_id for d in batch})
                FINAL_TIERS.labels(self.pool.name, self._tier(window_s, beam_size)).inc(
                    sum(d.msg.kind is SegmentKind.FINAL for d in batch))
            self._account(len(batch), busy, audio)
            BATCH.labels(kind, self.pool.name).observe(len(batch))
            RTF.labels(kind, self.pool.name).observe(busy / max(audio, 1e-3))
            AUDIO_SECONDS.labels(kind, self.pool.name).inc(audio)
            BUSY.labels(kind, self.pool.name).inc(busy)
            if self.trimmer.due():
                await lane.run(memory.trim)
        except Exception:
            log.exception("transcription of %d segment(s) failed; nak for redelivery", len(batch))
            metrics.count_error("transcription_failed")
            for d in batch:
                await d.raw.nak(delay=1.0)
            return
        finally:
            self._inflight = [d for d in self._inflight if d not in batch]
        if lane is self.final_lane:
            results = self._filled_first_partials(batch, results)
        todo = self._translating(batch, results) if lane is self.final_lane else []
        # Sessions with nothing to translate (and first partials) go out before the second decode; a session with a
        # final to translate keeps its items together, in order.
        waiting = {batch[i].msg.session_id for i in todo}
        first = [i for i, d in enumerate(batch) if d.msg.session_id not in waiting]
        await self._settle([batch[i] for i in first], [requests[i] for i in first], [results[i] for i in first])
        if todo:
            results = await self._speech_translate(todo, requests, results, window_s, beam_size)
            rest = [i for i, d in enumerate(batch) if d.msg.session_id in waiting]
            await self._settle([batch[i] for i in rest], [requests[i] for i in rest], [results[i] for i in rest])

    def _filled_first_partials(self, batch: list[Delivery[Segment]], results: list[SttResult]) -> list[SttResult]:
        """A first partial decoded with its own final that reads as nothing on its shorter audio (a filler, a soft
        head Whisper drops until it hears what follows) shows the final's words within its audio instead, as an
        early decode's partial does (_show_first_partial): the user still sees the utterance start first."""
        finals = {(d.msg.session_id, d.msg.utterance_id): (d.msg, r) for d, r in zip(batch, results, strict=True)
                  if d.msg.kind is SegmentKind.FINAL and not d.msg.speculative and r.words}
        out = list(results)
        for i, (d, r) in enumerate(zip(batch, results, strict=True)):
            hit = finals.get((d.msg.session_id, d.msg.utterance_id))
            if d.msg.kind is SegmentKind.PARTIAL and not r.text and hit is not None:
                out[i] = self._prefix(hit[1], d.msg.end - hit[0].start)
        return out

    async def _settle(self, batch: list[Delivery[Segment]], requests: list[SttRequest],
                      results: list[SttResult]) -> None:
        """Decoded items out: speculative ones kept for their finals, the rest published."""
        for d, req, r in zip(batch, requests, results, strict=True):
            if req.context is not None:
                LEFT_CONTEXT.labels(self.pool.name, "read" if r.context_s > 0 else "dropped").inc()
            if d.msg.speculative:  # kept for its final; nothing is published for it
                SPECULATIVE.labels(self.pool.name, "decoded").inc()
                if self._progress.get((d.msg.session_id, d.msg.utterance_id)) != -1:  # else its final is out
                    self._early.put(early_key(d.msg, req.language), (r, d.msg.seq))
                with contextlib.suppress(Exception):
                    await d.raw.ack()
            else:
                await self._deliver(d, r)

    def _translating(self, batch: list[Delivery[Segment]], results: list[SttResult]) -> list[int]:
        """The finals (early decodes included) whose stream wants Whisper's English."""
        todo = [i for i, (d, r) in enumerate(zip(batch, results, strict=True))
                if d.msg.kind is SegmentKind.FINAL and r.text and self._wants_english(d.msg, r.language)]
        if log.isEnabledFor(logging.DEBUG):
            for d, r in zip(batch, results, strict=True):
                if d.msg.kind is SegmentKind.FINAL and r.text:
                    log.debug("%s/%d (%s, speculative=%s): targets %s, translated: %s", d.msg.session_id,
                              d.msg.utterance_id, r.language, d.msg.speculative,
                              self.listeners.targets(stream_of(d.msg)), self._wants_english(d.msg, r.language))
        return todo

    async def _speech_translate(self, todo: list[int], requests: list[SttRequest], results: list[SttResult],
                                window_s: float, beam_size: int) -> list[SttResult]:
        """Finals whose stream wants Whisper's English get it: one more batched call in the finals lane (the
        translate task over each final's own audio, at the final's beam, over a window of at least
        speech_translate_window_s). A failure leaves them without."""
        assert self.engine is not None
        began = time.monotonic()
        try:
            texts = await self.final_lane.run(self.engine.translate_batch,
                                              [SttRequest(requests[i].audio, results[i].language) for i in todo],
                                              max(window_s, self.cfg.speech_translate_window_s), beam_size)
        except Exception:
            log.exception("speech translation of %d final(s) failed; they go out without it", len(todo))
            metrics.count_error("speech_translation_failed")
            return results
        took = time.monotonic() - began
        self.load.record(took, ())
        SPEECH_TRANSLATIONS.labels(self.pool.name).inc(len(todo))
        SPEECH_TRANSLATION_SECONDS.labels(self.pool.name).inc(took)
        out = list(results)
        for i, text in zip(todo, texts, strict=True):
            out[i] = dataclasses.replace(out[i], translation=text)
            if not text:
                log.info("speech translation of a %s final came out empty (%.1f s of audio)", results[i].language,
                         len(requests[i].audio) / 16000)
        log.debug("speech translation of %d final(s) in %.2f s", len(todo), took)
        return out

    async def _deliver(self, d: Delivery[Segment], r: SttResult, ack: bool = True) -> None:
        seg = d.msg
        final = seg.kind is SegmentKind.FINAL
        if not final and self._progress.get((seg.session_id, seg.utterance_id)) == -1:
            if ack:  # decoded while its final went out: fan-out would drop it
                with contextlib.suppress(Exception):
                    await d.raw.ack()
            return
        self._mark(seg, final, bool(r.text))
        if final and r.words:
            r = self._unlooped(seg, self._supported(seg, r))
        if seg.vocabulary:
            r = self._spelled(seg, r)
        if final and r.words:
            r = self._not_again(seg, r)
        if final:
            self._early.drop_utterance(seg.session_id, seg.utterance_id)
            self.context.add(seg.session_id, r.language, r.text)
            self.left.add(seg.session_id, r.language, np.frombuffer(seg.audio, "<i2"), r.words, seg.start)
        if final and seg.language == "auto" and r.text:
            self.langlock.observe(seg.session_id, r.language, r.language_prob, seg.end)
        if r.rejected and r.rejected != "empty":
            log.info("%s/%d: %s guard blanked the text", seg.session_id, seg.utterance_id, r.rejected)
        words = tuple(
            Word(word=w.word, start=round(seg.start + w.start, 3), end=round(seg.start + w.end, 3),
                 probability=w.probability)
            for w in r.words
        )
        await self._publish(d, ack, Transcript(
            session_id=seg.session_id, utterance_id=seg.utterance_id, seq=seg.seq, final_index=seg.final_index,
            kind=ResultKind.FINAL if final else ResultKind.PARTIAL, partition=seg.partition,
            text=r.text, language=r.language, start=seg.start, end=seg.end, words=words,
            speech_end_wall=seg.speech_end_wall, no_speech_prob=r.no_speech_prob, avg_logprob=r.avg_logprob,
            speech_start=seg.speech_start, endpoint=seg.endpoint, language_prob=r.language_prob,
            stream_id=seg.stream_id, speech_translation=r.translation if final else "", diarize=seg.diarize,
        ))

    def _supported(self, seg: Segment, r: SttResult) -> SttResult:
        """`r` less the words its audio does not support (actors/stt/support.py): outside the VAD's speech, in
        quiet audio."""
        kept = supported(np.frombuffer(seg.audio, "<i2"), r.words, seg.speech_start - seg.start, seg.end - seg.start)
        if len(kept) == len(r.words):
            return r
        UNSUPPORTED.labels(self.pool.name).inc(len(r.words) - len(kept))
        dropped = " ".join(w.word for w in r.words if w not in kept)
        log.info("%s/%d: dropped words outside the speech, in quiet audio: %r", seg.session_id, seg.utterance_id,
                 dropped)
        return _with_words(r, kept)

    def _unlooped(self, seg: Segment, r: SttResult) -> SttResult:
        """`r` less a phrase Whisper looped on, where its speech could not hold so many words (guards.looped)."""
        loop = looped([w.word for w in r.words], seg.end - max(seg.start, seg.speech_start))
        if loop is None:
            return r
        i, j = loop
        LOOPED.labels(self.pool.name).inc(j - i)
        log.info("%s/%d: dropped a looped phrase: %r", seg.session_id, seg.utterance_id,
                 " ".join(w.word for w in r.words[i:j]))
        return _with_words(r, r.words[:i] + r.words[j:])

    def _not_again(self, seg: Segment, r: SttResult) -> SttResult:
        """`r` less a leading phrase the session's previous finals already said (guards.repeated_head), or the
        previous final's last words read again before this one's speech begins (guards.repeated_edge)."""
        before = self.context.prompt(seg.session_id, r.language)
        onset = seg.speech_start - seg.start + MARGIN_S
        k = (repeated_head([w.word for w in r.words], before)
             or repeated_edge([w.word for w in r.words], [w.end for w in r.words], before, onset))
        if not k:
            return r
        REPEATED.labels(self.pool.name).inc(k)
        log.info("%s/%d: dropped a phrase the previous final said: %r", seg.session_id, seg.utterance_id,
                 " ".join(w.word for w in r.words[:k]))
        return _with_words(r, r.words[k:])

    def _spelled(self, seg: Segment, r: SttResult) -> SttResult:
        """`r` with the session's vocabulary spelled as given (actors/stt/vocabulary.py)."""
        if not r.words:
            text = vocabulary.correct_text(r.text, seg.vocabulary)
            return r if text == r.text else dataclasses.replace(r, text=text)
        words = vocabulary.correct_words(r.words, seg.vocabulary)
        return r if words is None else _with_words(r, words)

    def _account(self, items: int, busy: float, audio: float) -> None:
        """Throughput in the log every 30 s: batches, sizes, real-time factor, stale skips."""
        st = self._stats
        st["batches"] += 1
        st["items"] += items
        st["busy_s"] += busy
        st["audio_s"] += audio
        now = time.monotonic()
        if now - self._stats_at >= 30 and st["batches"]:
            log.info(
                "stt: %.0f batches, %.1f segments/batch, model busy %.0f%% (summed over lanes), RTF %.3f, "
                "%.0f stale partials skipped",
                st["batches"], st["items"] / st["batches"], 100 * st["busy_s"] / (now - self._stats_at),
                st["busy_s"] / max(st["audio_s"], 1e-9), st["stale"],
            )
            self._stats = dict.fromkeys(st, 0.0)
            self._stats_at = now

    def _mark(self, seg: Segment, final: bool, shown: bool) -> None:
        """Progress per utterance: the newest partial shown (one without text shows nothing), or -1 once final."""
        key = (seg.session_id, seg.utterance_id)
        if not final and not shown:
            return
        self._progress[key] = -1 if final else max(seg.seq, self._progress.get(key, 0))
        self._progress.move_to_end(key)
        while len(self._progress) > 10_000:
            self._progress.popitem(last=False)

    async def _publish(self, d: Delivery[Segment], ack: bool, t: Transcript) -> None:
        """Ack only once the transcript is stored; a failure redelivers this one segment only."""
        try:
            await self.bus.publish(transcript_subject(d.msg), t, msg_id=f"{t.session_id}:{t.seq}")
        except Exception:
            log.exception("%s/%d: publishing transcript failed; nak", t.session_id, t.seq)
            metrics.count_error("publish_failed")
            if ack:
                with contextlib.suppress(Exception):
                    await d.raw.nak(delay=1.0)
            return
        if not ack:
            return  # nothing of its own to settle
        await d.raw.ack()
        if t.speech_end_wall:
            LATENCY.labels(t.kind.value, self.pool.name).observe(max(0.0, time.time() - t.speech_end_wall))

    async def drain(self) -> None:
        self._stopping = True
        for loop in self._loops.values():
            loop.stop()
        self._wake_final.set()
        self._wake_partial.set()
        async with self._space:
            self._space.notify_all()

    async def close(self) -> None:
        self.final_lane.shutdown()
        self.partial_lane.shutdown()


async def create(bus: Bus, runtime: RuntimeSettings) -> Actor:
    pool = pools.load().serving(settings.load(SttSettings).stt_pool)
    return SttActor(bus, runtime, settings.load(SttSettings, pools.settings_env(pool.name, os.environ)), pool)
