"""Diarizer actor: labels each final of a diarized session with its speakers, in parallel with STT.

Consumes `tolk.diarize.<p>.<session>` (the segmenter's copy of a final's audio, partitioned like the segmenter
and fan-out, so one replica owns a session and its finals come in order), embeds the utterance and its sliding
windows, clusters online per session (actors/diarizer/clusters.py) and publishes `SpeakerTurns` on
`tolk.speakers.<p>.<session>` for fan-out to merge. A session's voices are stored in KV `tolk_diarizer` after
every final, so a restarted or rescheduled diarizer, and a resumed session, keep its labels.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from prometheus_client import Counter, Histogram

from actors.diarizer.clusters import SessionVoices, Span, label_utterance
from actors.diarizer.interface import SAMPLE_RATE, SpeakerEncoder
from actors.runtime import settings, topology
from actors.runtime.actor import Actor, RuntimeSettings
from actors.runtime.bus import Bus
from actors.runtime.consumer import Delivery, PullLoop
from actors.runtime.executor import BoundedExecutor
from actors.runtime.partition import owned_partitions
from schemas import MAX_SPEAKERS_RANGE, DiarizerState, Segment, SpeakerSpan, SpeakerTurns, decode, encode

log = logging.getLogger("tolk.diarizer")

STATE_BUCKET = "tolk_diarizer"

SECONDS = Histogram("tolk_diarizer_seconds", "Wall time to label one final (embedding and clustering).",
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0))
AUDIO = Counter("tolk_diarizer_audio_seconds", "Seconds of final audio labelled.")
CORRECTIONS = Counter("tolk_diarizer_corrections", "Earlier utterances relabelled (republished with a new revision).")


@dataclass
class DiarizerSettings:
    diarizer_engine: str = "ge2e"  # the speaker-embedding engine (ge2e: resemblyzer's GE2E encoder)
    diarizer_model: str = ""  # a folder or file with the engine's weights ("": the one its package ships)
    diarizer_max_speakers: int = 8  # for sessions that name none (MAX_SPEAKERS_RANGE bounds them)
    # 0..1: how readily a voice counts as new. Higher splits more (a new speaker below a higher similarity).
    diarizer_sensitivity: float = 0.5
    diarizer_window_s: float = 1.5  # the voice compared either side of a possible change inside an utterance
    diarizer_step_s: float = 0.25
    diarizer_min_turn_s: float = 1.0  # the shortest turn a change point may cut off
    diarizer_merge_threshold: float = 0.75  # two voices this alike are one speaker (earlier labels corrected)
    diarizer_establish_s: float = 4.0  # speech a new voice needs before it is a speaker of its own
    diarizer_workers: int = 1
    diarizer_threads: int = 1  # torch threads per worker
    session_idle_s: float = 600.0

    @property
    def threshold(self) -> float:
        """Cosine similarity under which a span is a new voice: 0.55 at sensitivity 0, 0.85 at 1 (GE2E's
        same-speaker median is ~0.8 on 3 s, different speakers' ~0.5)."""
        return 0.55 + 0.30 * min(max(self.diarizer_sensitivity, 0.0), 1.0)


def load_encoder(cfg: DiarizerSettings) -> SpeakerEncoder:
    if cfg.diarizer_engine == "ge2e":
        from actors.diarizer.ge2e import Ge2eEncoder

        return Ge2eEncoder(cfg.diarizer_model, threads=cfg.diarizer_threads)
    raise settings.ConfigError(f"TOLK_DIARIZER_ENGINE={cfg.diarizer_engine!r}: the diarizer knows ge2e")


@dataclass
class _Labelled:
    """An utterance's spans (by cluster) and the labels last published for it: republished when they change."""

    seg: Segment
    spans: list[Span]
    published: SpeakerTurns


HISTORY = 32  # utterances whose labels may still be corrected


class SessionLabels:
    def __init__(self, voices: SessionVoices, last_utterance: int) -> None:
        self.voices = voices
        self.last_utterance = last_utterance
        self.touched = time.monotonic()
        self.history: dict[int, _Labelled] = {}  # utterance → labels, the newest HISTORY

    def turns(self, seg: Segment, spans: list[Span], revision: int) -> SpeakerTurns:
        out: list[SpeakerSpan] = []
        for s in spans:
            label, alike = self.voices.label(s.cluster)
            out.append(SpeakerSpan(start=round(seg.start + s.start, 3), end=round(seg.start + s.end, 3),
                                   speaker=label, confidence=round(s.confidence * alike, 3)))
        return SpeakerTurns(session_id=seg.session_id, utterance_id=seg.utterance_id, final_index=seg.final_index,
                            partition=seg.partition, stream_id=seg.stream_id, speakers=self.voices.speakers(),
                            spans=tuple(out), revision=revision)

    def label(self, encoder: SpeakerEncoder, seg: Segment, cfg: DiarizerSettings) -> list[SpeakerTurns]:
        """Labels `seg` (blocking: runs in the executor); its SpeakerTurns first, then corrections of earlier ones."""
        audio = np.frombuffer(seg.audio, "<i2").astype(np.float32) / 32768
        spans = label_utterance(self.voices, encoder, audio, cfg.diarizer_window_s, cfg.diarizer_step_s,
                                cfg.threshold, cfg.diarizer_min_turn_s)
        self.voices.settle()
        out = [self.turns(seg, spans, 0)]
        for old in self.history.values():
            now = self.turns(old.seg, old.spans, old.published.revision + 1)
            if [s.speaker for s in now.spans] != [s.speaker for s in old.published.spans]:
                old.published = now
                out.append(now)
        self.history[seg.utterance_id] = _Labelled(seg, spans, out[0])
        while len(self.history) > HISTORY:
            del self.history[next(iter(self.history))]
        self.last_utterance = seg.utterance_id
        return out


class DiarizerActor(Actor):
    name = "diarizer"

    def __init__(self, bus: Bus, runtime: RuntimeSettings, cfg: DiarizerSettings, topo: topology.Topology) -> None:
        super().__init__(bus, runtime)
        self.cfg = cfg
        self.encoder: SpeakerEncoder | None = None
        self.executor = BoundedExecutor(cfg.diarizer_workers, 4, "diarizer")
        self.sessions: dict[str, SessionLabels] = {}
        partitions = owned_partitions(topo.partitions, runtime.replicas, runtime.replica_index)
        self.loops = [PullLoop(bus.js, "TOLK_DIARIZE", f"diarizer-p{p}", Segment, self._handle, batch=16)
                      for p in partitions]

    async def start(self) -> None:
        self.encoder = await self.executor.run(load_encoder, self.cfg)

    def info(self) -> dict[str, str]:
        return {"engine": self.cfg.diarizer_engine}

    async def run(self) -> None:
        tasks = [asyncio.create_task(loop.run(), name=f"diarizer.{loop.durable}") for loop in self.loops]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self) -> None:
        for loop in self.loops:
            loop.stop()

    async def close(self) -> None:
        self.executor.shutdown()

    async def _handle(self, items: list[Delivery[Segment]]) -> None:
        assert self.encoder is not None
        for d in items:  # in order: a session's voices after one final are the start of the next
            seg = d.msg
            session = await self._session(seg)
            if seg.utterance_id <= session.last_utterance:  # redelivered: what was published for it, once more
                old = session.history.get(seg.utterance_id)
                if old is not None:
                    await self._publish(old.published)
                else:
                    log.warning("%s/%d: redelivered after its session moved on; not relabelled", seg.session_id,
                                seg.utterance_id)
                await d.raw.ack()
                continue
            started = time.monotonic()
            labelled = await self.executor.run(session.label, self.encoder, seg, self.cfg)
            SECONDS.observe(time.monotonic() - started)
            AUDIO.inc(len(seg.audio) / 2 / SAMPLE_RATE)
            for turns in labelled:
                await self._publish(turns)
            if len(labelled) > 1:
                CORRECTIONS.inc(len(labelled) - 1)
            await self._save(seg.session_id, session)
            await d.raw.ack()
        self._sweep()

    async def _publish(self, t: SpeakerTurns) -> None:
        await self.bus.publish(f"tolk.speakers.{t.partition}.{t.session_id}", t,
                               msg_id=f"{t.session_id}:s{t.final_index}.{t.revision}")

    def _voices(self, seg: Segment) -> SessionVoices:
        lo, hi = MAX_SPEAKERS_RANGE
        wanted = seg.max_speakers or self.cfg.diarizer_max_speakers
        return SessionVoices(max_speakers=min(max(wanted, lo), hi), threshold=self.cfg.threshold,
                             merge_threshold=self.cfg.diarizer_merge_threshold,
                             establish_s=self.cfg.diarizer_establish_s)

    async def _session(self, seg: Segment) -> SessionLabels:
        session = self.sessions.get(seg.session_id)
        if session is None:
            session = self.sessions[seg.session_id] = await self._restore(seg)
        session.voices.max_speakers = self._voices(seg).max_speakers  # `configure` may change it
        session.touched = time.monotonic()
        return session

    async def _restore(self, seg: Segment) -> SessionLabels:
        voices = self._voices(seg)
        try:
            entry = await (await self.bus.kv(STATE_BUCKET)).get(seg.session_id)
        except (KeyNotFoundError, KeyDeletedError):
            return SessionLabels(voices, 0)
        except Exception as exc:  # KV away: labels start afresh (logged: they may renumber)
            log.warning("%s: diarizer state unknown, starting afresh: %s", seg.session_id, exc)
            return SessionLabels(voices, 0)
        state = decode(entry.value or b"", DiarizerState)
        if state.dim:
            rows = np.frombuffer(state.centroids, "<f4").reshape(-1, state.dim)
            voices.sums = [row.copy() for row in rows]
            voices.weights = list(state.weights)
            voices.merged, voices.numbers = dict(state.merged), dict(state.numbers)
        log.info("%s: %d speaker(s) restored", seg.session_id, len(voices.sums))
        return SessionLabels(voices, state.last_utterance)

    async def _save(self, sid: str, session: SessionLabels) -> None:
        v = session.voices
        dim = len(v.sums[0]) if v.sums else 0
        state = DiarizerState(session_id=sid, dim=dim, weights=tuple(v.weights), last_utterance=session.last_utterance,
                              centroids=np.stack(v.sums).astype("<f4").tobytes() if v.sums else b"",
                              merged=v.merged, numbers=v.numbers)
        try:
            await (await self.bus.kv(STATE_BUCKET)).put(sid, encode(state))
        except Exception as exc:  # the next final writes it again
            log.warning("%s: diarizer state not saved: %s", sid, exc)

    def _sweep(self) -> None:
        idle = time.monotonic() - self.cfg.session_idle_s
        for sid in [sid for sid, s in self.sessions.items() if s.touched < idle]:
            del self.sessions[sid]


async def create(bus: Bus, runtime: RuntimeSettings) -> Actor:
    return DiarizerActor(bus, runtime, settings.load(DiarizerSettings), topology.load())
