"""Translator actor: transcripts in, transcripts with `translations` out, each text translated once.

It sits between STT and fan-out on a durable consumer shared by all replicas (`translator` on
TOLK_TRANSCRIPTS) and republishes every transcript on `tolk.result.<partition>.<session>`: finals with
one translation per target of the stream's listeners (KV `tolk_listeners`), partials unchanged or, for
listeners that asked, with their stable prefix translated at most every `mt_partial_interval_s`.
A transcript is acked only after its result is published; failures become per-target errors, never a
dropped final. Fan-out restores per-session order, so items are processed concurrently.

What the engines serve is announced in the heartbeat (`translation()`, a `TranslationCatalog`): the edge refuses a
pair none serves at start / configure. An engine that is not there (no weights, no hub) is marked so at start and
looked at again every `mt_retry_s`; a pair no engine serves is answered `unsupported_pair` at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from prometheus_client import Counter, Histogram

from actors.runtime import listeners, metrics, settings
from actors.runtime.actor import Actor, RuntimeSettings, heartbeats
from actors.runtime.bus import Bus
from actors.runtime.consumer import Delivery, PullLoop
from actors.runtime.text import stable_prefix
from actors.translator.engine import (
    Described,
    Engine,
    ErrorKind,
    Router,
    Step,
    TranslationError,
    Unavailable,
    catalog,
    normalize,
)
from actors.translator.service import TranslationService
from actors.translator.speech import SpeechEngine, better
from schemas import ResultKind, Transcript, TranslationCatalog, stream_of

log = logging.getLogger("tolk.translator")

TRANSLATIONS = Counter("tolk_translations", "Sentences translated into results (cache hits included), by pair.",
                       ["source", "target"])
TRANSLATION_ERRORS = Counter("tolk_translation_errors", "Targets a result went out without, by error code.",
                             ["code"])
LATENCY = Histogram("tolk_translation_latency_seconds", "A transcript's arrival to its result (with translations) "
                    "stored.", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0))


@dataclass
class TranslatorSettings:
    """Env: TOLK_MT_ENGINES, TOLK_EASYNMT_MODEL, TOLK_OPUS_MT_DIR, ... (docs/configuration.md#configuration)."""

    mt_engines: str = "fast,easynmt"  # routing order: a pair goes to the first engine that serves it
    mt_pivot: str = "en"  # bridge language when no engine serves a pair directly ("" = never pivot)
    easynmt_model: str = "opus-mt"  # opus-mt | EasyNMT model name | folder with easynmt.json
    opus_mt_dir: str = ""  # folder of opus-mt-<src>-<tgt>/ Marian models (air-gapped installs)
    easynmt_cache: str = ""  # EasyNMT's download cache (default: its own, under TORCH_HOME)
    mt_max_loaded_pairs: int = 4  # LRU of Marian models held in memory
    mt_device: str = "auto"  # auto | cpu | cuda
    mt_beam_size: int = 4
    mt_workers: int = 1  # concurrent engine calls (each is a batch)
    mt_max_batch: int = 16  # sentences per engine call
    mt_batch_wait_ms: float = 5.0  # how long a lone sentence waits for company
    mt_cache_size: int = 10000  # translations remembered, keyed by (src, tgt, text)
    mt_partial_interval_s: float = 1.0  # partial translations per session at most this often
    mt_timeout_s: float = 4.0  # a final waits this long for its translations, then goes out with errors
    mt_preload: str = ""  # pairs loaded at start, e.g. "en-de,de-en" (first use of a pair loads its model)
    mt_download: bool = True  # let EasyNMT/Hugging Face download models; false = HF_HUB_OFFLINE
    mt_max_inflight: int = 512  # transcripts being translated at once (backpressure on the consumer)
    mt_retry_s: float = 60.0  # an engine (or model hub) that is not there is looked for again this often
    # How often the STT heartbeats are read for pools that translate speech into English themselves (Whisper's
    # translate task, engine `whisper`): pairs they serve are announced within this long of the pool's start.
    mt_speech_poll_s: float = 5.0


MAX_WANTED = 64  # unserved pairs remembered (and announced, with why) after a final asked for them


def build_engines(cfg: TranslatorSettings) -> list[Engine]:
    if not cfg.mt_download:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub at import: set before EasyNMT loads
    engines: list[Engine] = []
    for name in (n.strip() for n in cfg.mt_engines.split(",") if n.strip()):
        if name not in ("fast", "easynmt"):
            log.error("unknown translation engine %r in TOLK_MT_ENGINES (fast | easynmt): ignored", name)
            continue
        build = _fast if name == "fast" else _easynmt(cfg)
        try:
            engines.append(build())
        except ImportError as exc:  # not installed: looking again will not help
            log.error("translation engine %r unavailable: %s", name, exc)
            engines.append(Unavailable(name, f"not installed ({exc})", None, 0.0))
        except Exception as exc:  # a model that could not be fetched: looked for again in the background
            engine = Unavailable(name, "", build, cfg.mt_retry_s)
            engine.reason = f"could not load ({exc.__class__.__name__}: {str(exc)[:200]})"
            log.error("translation engine %r unavailable, retried every %.0f s: %s", name, cfg.mt_retry_s,
                      engine.reason)
            engines.append(engine)
    return engines


def _fast() -> Engine:
    from actors.translator.fast import FastTranslateEngine

    return FastTranslateEngine()


def _easynmt(cfg: TranslatorSettings) -> Callable[[], Engine]:
    def build() -> Engine:
        from actors.translator.opus import EasyNmtEngine

        return EasyNmtEngine(
            model=cfg.easynmt_model, opus_mt_dir=cfg.opus_mt_dir, cache_folder=cfg.easynmt_cache,
            max_loaded_pairs=cfg.mt_max_loaded_pairs, device=cfg.mt_device, beam_size=cfg.mt_beam_size,
            batch_size=cfg.mt_max_batch, retry_s=cfg.mt_retry_s,
        )

    return build


def result_subject(t: Transcript) -> str:
    return f"tolk.result.{t.partition}.{t.session_id}"


class TranslatorActor(Actor):
    name = "translator"

    def __init__(self, bus: Bus, runtime: RuntimeSettings, cfg: TranslatorSettings,
                 engines: list[Engine] | None = None) -> None:
        super().__init__(bus, runtime)
        self.cfg = cfg
        self._engines = engines
        self.view = listeners.ListenerView()
        self.service: TranslationService | None = None
        self.loop = PullLoop(bus.js, "TOLK_TRANSCRIPTS", "translator", Transcript, self._handle, batch=64,
                             fetch_timeout=0.5)
        self._slots = asyncio.Semaphore(cfg.mt_max_inflight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        # session → (utterance, last partial text, stable prefix last translated, when)
        self._partials: OrderedDict[str, tuple[int, str, str, float]] = OrderedDict()
        self._published = 0
        self._wanted: OrderedDict[tuple[str, str], None] = OrderedDict()  # pairs asked for that nothing served
        self.speech = SpeechEngine()  # Whisper's translate task, run by STT pools that announce it

    async def start(self) -> None:
        engines = self._engines if self._engines is not None else await asyncio.to_thread(build_engines, self.cfg)
        router = Router(engines, pivot=self.cfg.mt_pivot)
        self.service = TranslationService(
            router, workers=max(1, self.cfg.mt_workers), cache_size=self.cfg.mt_cache_size,
            max_batch=self.cfg.mt_max_batch, batch_wait_s=self.cfg.mt_batch_wait_ms / 1000,
        )
        kv = await self.bus.kv(listeners.BUCKET)
        self._watch = asyncio.create_task(self.view.watch(kv), name="translator.listeners")
        await asyncio.wait_for(self.view.synced.wait(), timeout=10)
        await self._preload()
        served = self.translation()
        log.info("translator ready: engines %s, pivot %r; serving %s", [e.name for e in engines] or "none",
                 self.cfg.mt_pivot, ", ".join(f"{p.source}→{p.target} ({p.engine})" for p in served.pairs
                                              if p.available) or "no pair")

    def translation(self) -> TranslationCatalog:
        """What this instance's engines serve now (announced in its heartbeat, read by the edge)."""
        engines = self.service.engines() if self.service is not None else []
        return catalog(engines, self.service.router.pivot if self.service else "", set(self._wanted), self.speech)

    async def _follow_speech(self) -> None:
        """Every `mt_speech_poll_s`: which STT pools translate speech into English (their heartbeats); a change is
        announced at once."""
        while True:
            try:
                if self.speech.update(await heartbeats(self.bus)):
                    log.info("speech translation (whisper) from: %s", ", ".join(self.speech.languages()) or "none")
                    self.announce_now.set()
            except Exception as exc:
                log.warning("reading STT heartbeats failed: %s", exc)
            await asyncio.sleep(max(0.5, self.cfg.mt_speech_poll_s))

    async def _look_again(self) -> None:
        """Every `mt_retry_s`: engines that were not there are built again, hubs asked again, weights rescanned;
        when that changes what is served, routes are recomputed and the heartbeat announces it now."""
        while True:
            await asyncio.sleep(max(1.0, self.cfg.mt_retry_s))
            if self.service is not None and await self.refresh_engines():
                self.announce_now.set()

    async def refresh_engines(self) -> bool:
        """One look (see `_look_again`); True when what is served changed."""
        assert self.service is not None
        engines, changed = self.service.engines(), False
        for i, engine in enumerate(list(engines)):
            if not isinstance(engine, Described):
                continue
            try:
                moved = await asyncio.to_thread(engine.refresh)
            except Exception as exc:
                log.warning("%s: looking again failed: %s", engine.name, exc)
                continue
            if isinstance(engine, Unavailable) and engine.built is not None:
                engines[i] = engine.built
                log.info("translation engine %s is available now", engine.name)
            changed = changed or moved
        if changed:
            self.service.router.reset()
            log.info("translation pairs now served: %s", ", ".join(
                f"{p.source}→{p.target} ({p.engine})" for p in self.translation().pairs if p.available) or "none")
        return changed

    async def _preload(self) -> None:
        assert self.service is not None
        for pair in (p.strip() for p in self.cfg.mt_preload.split(",") if p.strip()):
            src, _, tgt = pair.partition("-")
            try:
                await self.service.translate("Hello.", normalize(src), normalize(tgt))
                log.info("preloaded %s", pair)
            except TranslationError as exc:
                log.error("preloading %s failed: %s", pair, exc)
                self._want(normalize(src), normalize(tgt))

    async def run(self) -> None:
        stats = asyncio.create_task(self._log_stats(), name="translator.stats")
        look = asyncio.create_task(self._look_again(), name="translator.retry")
        follow = asyncio.create_task(self._follow_speech(), name="translator.speech")
        try:
            await self.loop.run()
            if self._tasks:  # drain: finish what was taken before returning
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            stats.cancel()
            look.cancel()
            follow.cancel()
            if self._watch is not None:
                self._watch.cancel()
            await asyncio.gather(stats, look, follow, *([self._watch] if self._watch else []),
                                 return_exceptions=True)
            if self.service is not None:
                await self.service.close()
            for engine in self.service.engines() if self.service else []:
                engine.close()

    async def drain(self) -> None:
        self.loop.stop()

    # ------------------------------------------------------------------ work
    async def _handle(self, items: list[Delivery[Transcript]]) -> None:
        for d in items:
            await self._slots.acquire()  # bounded: a full translator stops fetching
            task = asyncio.create_task(self._process(d), name=f"translator.{d.msg.session_id}.{d.msg.seq}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, d: Delivery[Transcript]) -> None:
        began = time.monotonic()
        try:
            t = await self.enrich(d.msg)
            await self.bus.publish(result_subject(t), t, msg_id=f"{t.session_id}:r{t.seq}")
            await d.raw.ack()
            self._published += 1
            LATENCY.observe(time.monotonic() - began)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s/%d: result not published; nak for redelivery", d.msg.session_id, d.msg.seq)
            metrics.count_error("publish_failed")
            try:
                await d.raw.nak(delay=1.0)
            except Exception:  # connection gone: JetStream redelivers after ack_wait anyway
                pass
        finally:
            self._slots.release()

    async def enrich(self, t: Transcript) -> Transcript:
        """The transcript with translations for every target its stream's listeners want now."""
        if t.kind is ResultKind.END:
            self._partials.pop(t.session_id, None)
            return t
        if t.kind is ResultKind.PARTIAL:
            return await self._partial(t)
        self._partials.pop(t.session_id, None)
        targets = self.view.targets(stream_of(t))
        if not targets or not t.text.strip():
            return t
        translations, errors, engines, pivots = await self.translate_all(t.text, t.language, targets,
                                                                         t.speech_translation)
        return _with(t, translations, errors, engines, pivots)

    async def _partial(self, t: Transcript) -> Transcript:
        targets = self.view.targets(stream_of(t), partial=True)
        if not targets:
            return t
        now = time.monotonic()
        utterance, previous, translated, at = self._partials.get(t.session_id, (t.utterance_id, "", "", 0.0))
        if utterance != t.utterance_id:
            previous, translated, at = "", "", 0.0
        stable = stable_prefix(previous, t.text)  # translating more would churn the listener's screen
        self._partials[t.session_id] = (t.utterance_id, t.text, translated, at)
        self._partials.move_to_end(t.session_id)
        while len(self._partials) > 10000:
            self._partials.popitem(last=False)
        if not stable or stable == translated or now - at < self.cfg.mt_partial_interval_s:
            return t
        self._partials[t.session_id] = (t.utterance_id, t.text, stable, now)
        translations, errors, engines, pivots = await self.translate_all(stable, t.language, targets, partial=True)
        return _with(t, translations, errors, engines, pivots)

    def _plan(self, src: str, tgt: str) -> tuple[str, tuple[Step, ...] | None]:
        """How src→tgt is served: ("speech", None) Whisper's English as is, ("pivot", en→tgt) from Whisper's
        English, or ("text", route) the text engines (route None: none serves it)."""
        assert self.service is not None
        router = self.service.router
        route = router.route(src, tgt)
        if src == tgt or not self.speech.serves(src):
            return "text", route
        quality = self.speech.quality(src)
        if tgt == "en":
            if route is None or better(quality, _quality(route[0]) if len(route) == 1 else None):
                return "speech", None
            return "text", route
        if route is not None and (len(route) == 1 or route[0].tgt != "en"):
            return "text", route
        onward = router.route("en", tgt)
        if onward is None or len(onward) != 1:
            return "text", route
        if route is None or better(quality, _quality(route[0])):
            return "pivot", onward
        return "text", route

    async def _one(self, text: str, src: str, tgt: str, speech: str) -> tuple[str, str, str]:
        """(translation, engine, pivot) of one target; raises TranslationError."""
        assert self.service is not None
        how, route = self._plan(src, tgt)
        if how != "text" and not speech.strip():
            # STT sent no English (it did not know yet that this stream wants it, or a guard blanked it): the
            # text engines serve the pair if they can at all
            how, route = "text", self.service.router.route(src, tgt)
            if route is None:
                raise TranslationError(ErrorKind.ENGINE_FAILED, f"no speech translation came with this {src} final")
        if how == "speech":
            return speech, self.speech.name, ""
        if how == "pivot":
            assert route is not None
            out = await self.service.translate(speech, "en", tgt)
            return out, f"{self.speech.name}+{route[0].engine.name}", "en"
        out = await self.service.translate(text, src, tgt)
        names = "+".join(dict.fromkeys(s.engine.name for s in route)) if route else ""
        return out, names, (self.service.router.pivot if route is not None and len(route) > 1 else "")

    async def translate_all(self, text: str, language: str, targets: tuple[str, ...], speech: str = "",
                            partial: bool = False) -> tuple[dict[str, str], dict[str, str], dict[str, str],
                                                            dict[str, str]]:
        """(translations, errors, engines, pivots) per target. `speech`: STT's English of the final's audio.
        A partial has none: targets only Whisper serves are left out of it, without an error."""
        assert self.service is not None
        src = normalize(language) if language else ""
        translations: dict[str, str] = {}
        errors: dict[str, str] = {}
        engines: dict[str, str] = {}
        pivots: dict[str, str] = {}
        if not src:
            TRANSLATION_ERRORS.labels(ErrorKind.UNKNOWN_SOURCE.value).inc(len(targets))
            return {}, dict.fromkeys(targets, ErrorKind.UNKNOWN_SOURCE.value), {}, {}
        if partial:
            targets = tuple(t for t in targets if self._plan(src, normalize(t))[0] == "text")
        tasks = [asyncio.ensure_future(self._one(text, src, normalize(tgt), speech)) for tgt in targets]
        if tasks:
            await asyncio.wait(tasks, timeout=self.cfg.mt_timeout_s)
        for tgt, task in zip(targets, tasks, strict=True):
            if not task.done():
                # Late (a model still loading, an overloaded engine): this result goes out without it;
                # the work continues and lands in the cache for the next listener / utterance.
                task.add_done_callback(_consume)
                errors[tgt] = ErrorKind.TIMEOUT.value
                continue
            exc = asyncio.CancelledError() if task.cancelled() else task.exception()
            if exc is None:
                translations[tgt], engine, pivot = task.result()
                if engine:
                    engines[tgt] = engine
                if pivot:
                    pivots[tgt] = pivot
            elif isinstance(exc, TranslationError):
                errors[tgt] = exc.kind.value
            else:
                log.error("translating to %s failed: %r", tgt, exc)
                errors[tgt] = ErrorKind.ENGINE_FAILED.value
        for tgt in translations:
            TRANSLATIONS.labels(src, normalize(tgt)).inc()
        for tgt, code in errors.items():
            TRANSLATION_ERRORS.labels(code).inc()
            if code == ErrorKind.UNSUPPORTED_PAIR.value:
                self._want(src, normalize(tgt))
        return translations, errors, engines, pivots

    def _want(self, src: str, tgt: str) -> None:
        """A pair asked for that nothing serves: announced (with why) so `GET /v1/languages` shows it."""
        if (src, tgt) in self._wanted:
            return
        self._wanted[(src, tgt)] = None
        while len(self._wanted) > MAX_WANTED:
            self._wanted.popitem(last=False)
        self.announce_now.set()

    async def _log_stats(self) -> None:
        while True:
            await asyncio.sleep(30)
            if self.service is None:
                continue
            s = self.service.stats
            log.info("published %d; translations: %d requests, %d cache hits, %d joined, %d engine calls for %d "
                     "sentences, %d failures; pairs %s", self._published, s.requests, s.cache_hits, s.joined,
                     s.engine_calls, s.sentences, s.failures, s.per_pair)


def _consume(task: asyncio.Future[tuple[str, str, str]]) -> None:
    if not task.cancelled():
        task.exception()


def _quality(step: Step) -> float | None:
    """A text engine's measured chrF for a step's pair, where it says (its `describe`)."""
    if not isinstance(step.engine, Described):
        return None
    return next((p.quality for p in step.engine.describe()[1] if (p.source, p.target) == (step.src, step.tgt)), None)


def _with(t: Transcript, translations: dict[str, str], errors: dict[str, str], engines: dict[str, str],
          pivots: dict[str, str]) -> Transcript:
    return msgspec.structs.replace(t, translations=translations, translation_errors=errors,
                                   translation_engines=engines, translation_pivots=pivots)


async def create(bus: Bus, runtime: RuntimeSettings) -> Actor:
    return TranslatorActor(bus, runtime, settings.load(TranslatorSettings))
