"""Segmenter actor: per-session VAD state for the partitions this replica owns."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from nats.js.errors import KeyDeletedError, KeyNotFoundError
from prometheus_client import Counter

from actors.runtime import settings, topology
from actors.runtime.actor import Actor, RuntimeSettings
from actors.runtime.bus import Bus
from actors.runtime.consumer import Delivery, PullLoop
from actors.runtime.executor import BoundedExecutor
from actors.runtime.partition import owned_partitions
from actors.segmenter.audio import Resampler, decode_pcm, to_int16_bytes
from actors.segmenter.segmenter import Cut, SegmenterConfig, UtteranceSegmenter
from actors.segmenter.vad import DualVad, SileroModel, Vote, WebRtcStream
from schemas import (
    AudioChunk,
    ResultKind,
    Segment,
    SegmenterCheckpoint,
    SegmentKind,
    Transcript,
    decode,
    encode,
)

log = logging.getLogger("tolk.segmenter")

CHECKPOINTS = "tolk_segmenter"
SEQ_GAP = 10_000  # more than the partials one utterance can emit between two checkpoints
AUDIO_SECONDS = Counter("tolk_audio_seconds", "Seconds of audio received (microphones, files and channels).")
SEGMENTS = Counter("tolk_segments", "Segments sent to STT: partial (utterance so far) and final.", ["kind"])


@dataclass
class SegmenterSettings:
    """Env: TOLK_VAD_VOTE, TOLK_ENDPOINT_MS, ... (README "Configuration")."""

    vad_vote: Vote = Vote.AND
    webrtc_aggressiveness: int = 2
    silero_threshold: float = 0.5
    endpoint_ms: int = 500
    max_utterance_s: float = 15.0
    partial_every_ms: int = 700
    first_partial_ms: int = 300
    pre_speech_ms: int = 1000
    min_speech_ms: int = 250
    session_idle_s: float = 600.0  # forget a session that sent nothing (its client vanished)
    workers: int = 1


class SessionState:
    def __init__(self, chunk: AudioChunk, seg: UtteranceSegmenter, partition: int) -> None:
        self.session_id = chunk.session_id
        self.partition = partition
        self.language = chunk.language
        self.stream_id = chunk.stream_id
        self.sample_rate = chunk.sample_rate
        self.resampler = Resampler(chunk.sample_rate)
        self.segmenter = seg
        self.seq = 0
        self.finals = 0
        self.last_chunk = 0
        self.touched = time.monotonic()


class SegmenterActor(Actor):
    name = "segmenter"

    def __init__(self, bus: Bus, runtime: RuntimeSettings, cfg: SegmenterSettings, topo: topology.Topology) -> None:
        super().__init__(bus, runtime)
        self.cfg = cfg
        self.topo = topo
        self.partitions = owned_partitions(topo.partitions, runtime.replicas, runtime.replica_index)
        self.executor = BoundedExecutor(workers=cfg.workers, backlog=len(self.partitions), name="vad")
        self.sessions: dict[str, SessionState] = {}
        self.ended: OrderedDict[str, None] = OrderedDict()  # recently finished: late chunks are acked, unused
        self.silero: SileroModel | None = None
        self.seg_config = SegmenterConfig(
            endpoint_ms=cfg.endpoint_ms,
            max_utterance_s=cfg.max_utterance_s,
            partial_every_ms=cfg.partial_every_ms,
            first_partial_ms=cfg.first_partial_ms,
            pre_speech_ms=cfg.pre_speech_ms,
            min_speech_ms=cfg.min_speech_ms,
        )
        self.loops = [
            PullLoop(bus.js, "TOLK_AUDIO", f"segmenter-p{p}", AudioChunk, self._handle(p), batch=64, fetch_timeout=1.0)
            for p in self.partitions
        ]

    async def start(self) -> None:
        self.silero = await self.executor.run(SileroModel)
        log.info("segmenter owns partitions %s", self.partitions)

    async def run(self) -> None:
        tasks = [asyncio.create_task(loop.run(), name=f"segmenter.{loop.durable}") for loop in self.loops]
        tasks.append(asyncio.create_task(self._reap(), name="segmenter.reap"))
        try:
            await asyncio.gather(*tasks[:-1])
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self) -> None:
        for loop in self.loops:
            loop.stop()

    async def close(self) -> None:
        self.executor.shutdown()

    def _handle(self, partition: int):  # type: ignore[no-untyped-def]
        async def handle(items: list[Delivery[AudioChunk]]) -> None:
            for d in items:  # in stream order: a session's chunks stay ordered
                await self._chunk(d, partition)

        return handle

    async def _state(self, chunk: AudioChunk, partition: int) -> SessionState:
        state = self.sessions.get(chunk.session_id)
        if state is None:
            assert self.silero is not None
            vad = DualVad(
                WebRtcStream(self.cfg.webrtc_aggressiveness),
                self.silero.stream(self.cfg.silero_threshold),
                self.cfg.vad_vote,
            )
            state = SessionState(chunk, UtteranceSegmenter(vad, self.seg_config), partition)
            self.sessions[chunk.session_id] = state
            checkpoint = await self._checkpoint(chunk.session_id)
            if checkpoint is not None:
                # Another process segmented this session before (it crashed or was restarted): continue its
                # numbering past anything it may have sent after the checkpoint, and its stream clock.
                state.seq = checkpoint.seq + SEQ_GAP
                state.finals = checkpoint.finals
                state.last_chunk = checkpoint.last_chunk
                state.segmenter.restore(checkpoint.utterance_id, checkpoint.frames)
                log.warning("%s: continuing after final %d (a previous segmenter stopped mid-session)",
                            chunk.session_id, checkpoint.finals)
            else:
                log.info("%s: new session on partition %d (%d Hz %s)", chunk.session_id, partition,
                         chunk.sample_rate, chunk.encoding.value)
        return state

    async def _checkpoint(self, sid: str) -> SegmenterCheckpoint | None:
        try:
            entry = await (await self.bus.kv(CHECKPOINTS)).get(sid)
            return decode(entry.value, SegmenterCheckpoint) if entry.value else None
        except (KeyNotFoundError, KeyDeletedError):
            return None
        except Exception as exc:  # KV away or an old record: start the session afresh
            log.warning("%s: checkpoint not read: %s", sid, exc)
            return None

    async def _save_checkpoint(self, state: SessionState) -> None:
        checkpoint = SegmenterCheckpoint(
            session_id=state.session_id, seq=state.seq, finals=state.finals,
            utterance_id=state.segmenter.utterance_id, frames=state.segmenter.frames_consumed,
            last_chunk=state.last_chunk)
        try:
            await (await self.bus.kv(CHECKPOINTS)).put(state.session_id, encode(checkpoint))
        except Exception as exc:  # the next final writes it again; only a crash before then costs more
            log.warning("%s: checkpoint not saved: %s", state.session_id, exc)

    async def _chunk(self, d: Delivery[AudioChunk], partition: int) -> None:
        chunk = d.msg
        if chunk.session_id in self.ended:
            await d.raw.ack()
            return
        state = await self._state(chunk, partition)
        if chunk.chunk_seq <= state.last_chunk:
            await d.raw.ack()  # redelivery of something already applied
            return
        state.language = chunk.language  # `configure` may change it: applies from the next utterance cut
        if chunk.sample_rate != state.sample_rate:
            log.error("%s: sample rate changed mid-session; chunk dropped", chunk.session_id)
            await d.raw.term()
            return
        state.last_chunk = chunk.chunk_seq
        state.touched = time.monotonic()
        cuts = await self.executor.run(self._segment, state, chunk)
        for cut in cuts:
            await self._emit(state, cut)
        if any(cut.final for cut in cuts):
            await self._save_checkpoint(state)
        if chunk.end:
            state.seq += 1
            await self.bus.publish(
                f"tolk.transcript.{partition}.{state.session_id}",
                Transcript(session_id=state.session_id, utterance_id=state.segmenter.utterance_id,
                           seq=state.seq, final_index=state.finals + 1, kind=ResultKind.END, partition=partition,
                           stream_id=state.stream_id),
                msg_id=f"{state.session_id}:{state.seq}",
            )
            self.sessions.pop(state.session_id, None)
            self.ended[state.session_id] = None
            while len(self.ended) > 10_000:
                self.ended.popitem(last=False)
        await d.raw.ack()

    @staticmethod
    def _segment(state: SessionState, chunk: AudioChunk) -> list[Cut]:
        pcm = decode_pcm(chunk.data, chunk.encoding)
        AUDIO_SECONDS.inc(len(pcm) / chunk.sample_rate)
        samples = state.resampler.push(pcm, last=chunk.end)
        cuts = state.segmenter.push(samples, chunk.received_at)
        if chunk.end:
            cuts += state.segmenter.flush(chunk.received_at)
        return cuts

    async def _emit(self, state: SessionState, cut: Cut) -> None:
        state.seq += 1
        kind = SegmentKind.FINAL if cut.final else SegmentKind.PARTIAL
        final_index = state.finals + 1
        if cut.final:
            state.finals += 1
        seg = Segment(
            session_id=state.session_id, utterance_id=cut.utterance_id, seq=state.seq,
            final_index=final_index, kind=kind,
            audio=to_int16_bytes(cut.audio), start=round(cut.start, 3), end=round(cut.end, 3),
            language=state.language, speech_end_wall=cut.speech_end_wall, partition=state.partition,
            speech_start=round(cut.speech_start, 3), endpoint=cut.endpoint, stream_id=state.stream_id,
        )
        await self.bus.publish(
            f"tolk.segment.{kind.value}.{state.partition}.{state.session_id}", seg,
            msg_id=f"{state.session_id}:{state.seq}",
        )
        SEGMENTS.labels(kind.value).inc()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(30)
            cutoff = time.monotonic() - self.cfg.session_idle_s
            for sid in [s for s, st in self.sessions.items() if st.touched < cutoff]:
                log.info("%s: idle for %.0fs; state dropped", sid, self.cfg.session_idle_s)
                self.sessions.pop(sid, None)


async def create(bus: Bus, runtime: RuntimeSettings) -> Actor:
    return SegmenterActor(bus, runtime, settings.load(SegmenterSettings), topology.load())
