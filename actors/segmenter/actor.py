"""Segmenter actor: per-session VAD state for the partitions this replica owns.

Crash safety: a chunk is acked only once a stored checkpoint covers it (held.py). On start the replica
deletes and re-creates its partitions' durable consumers, so the chunks a dead predecessor held come back at
once, oldest first and ahead of new audio, instead of after the ack wait and behind it; each session then
resumes from its checkpoint and re-runs VAD over them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import msgspec
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NotFoundError
from prometheus_client import Counter

from actors.runtime import metrics, pools, settings, topology
from actors.runtime.actor import Actor, RuntimeSettings
from actors.runtime.bus import Bus
from actors.runtime.consumer import Delivery, PullLoop
from actors.runtime.executor import BoundedExecutor
from actors.runtime.partition import owned_partitions
from actors.segmenter.audio import Resampler, decode_pcm, to_int16_bytes
from actors.segmenter.held import Held, HeldChunks, Resume
from actors.segmenter.segmenter import Cut, SegmenterConfig, UtteranceSegmenter
from actors.segmenter.vad import FRAME, SILERO_SURE, DualVad, SileroModel, Vote, WebRtcStream
from schemas import (
    AudioChunk,
    Endpoint,
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
STREAM = "TOLK_AUDIO"
SEQ_GAP = 10_000  # more than the partials one utterance can emit between two checkpoints
RELEASE_SAMPLES = 16_000  # in silence, ack (after a checkpoint) once this much audio is done with: ~1 KV write/s
FRESH_S = 1.5  # a replayed chunk older than this gets no partials: its final follows within moments
UPKEEP_S = 10.0  # how often held chunks are marked in progress and idle sessions reaped
AUDIO_SECONDS = Counter("tolk_audio_seconds", "Seconds of audio received (microphones, files and channels).")
SEGMENTS = Counter("tolk_segments", "Segments sent to STT: partial (utterance so far), final, and speculative "
                   "(a final's audio sent ahead during the endpoint silence).", ["kind"])


@dataclass
class SegmenterSettings:
    """Env: TOLK_VAD_VOTE, TOLK_ENDPOINT_MS, ... (docs/configuration.md#configuration)."""

    vad_vote: Vote = Vote.AND
    webrtc_aggressiveness: int = 2
    silero_threshold: float = 0.5
    # A frame Silero is this sure of is speech though webrtcvad says not (hoarse, breathy voices; vad.DualVad).
    # Above 1: off, webrtcvad vetoes every frame under the `and` vote.
    vad_silero_sure: float = SILERO_SURE
    # Both VADs hear the audio through a slow peak gain (up to 40 dB; STT gets the audio as sent): without it
    # speech peaking under about -50 dBFS (a distant or quietly set microphone) is silence to Silero.
    vad_gain: bool = True
    endpoint_ms: int = 500
    # Continuous speech (docs/architecture.md#continuous-speech): the ending pause shrinks from endpoint_ms to
    # endpoint_min_ms between shrink_after_s and soft_max_s of speech; past soft_max_s the first gap_ms gap ends it.
    endpoint_min_ms: int = 200
    shrink_after_s: float = 6.0
    soft_max_s: float = 10.0
    gap_ms: int = 128
    gap_min_ms: int = 64  # the gap needed shrinks to this at the cap, as the dip does
    gap_db: float = 32.0
    gap_db_min: float = 20.0  # the dip needed relaxes to this at the cap
    max_utterance_s: float = 15.0
    cap_lookback_s: float = 2.0
    partial_every_ms: int = 700
    partial_growth: float = 0.0  # off: docs/benchmarks.md#partials-spaced-out-on-long-utterances
    first_partial_ms: int = 300
    pre_speech_ms: int = 1000
    pre_resume_ms: int = 0  # after a short pause: the audio since the previous utterance, up to this (0: off)
    min_speech_ms: int = 160
    speculate: bool = True  # send a final's audio ahead once the tail pad of silence has passed (STT: the same)
    session_idle_s: float = 600.0  # forget a session that sent nothing (its client vanished)
    workers: int = 1


class SessionState:
    def __init__(self, chunk: AudioChunk, seg: UtteranceSegmenter, partition: int) -> None:
        self.session_id = chunk.session_id
        self.partition = partition
        self.language = chunk.language
        self.prompt = chunk.prompt
        self.vocabulary = chunk.vocabulary
        self.diarize = chunk.diarize
        self.max_speakers = chunk.max_speakers
        self.stream_id = chunk.stream_id
        self.sample_rate = chunk.sample_rate
        self.resampler = Resampler(chunk.sample_rate)
        self.segmenter = seg
        self.seq = 0
        self.finals = 0
        self.last_chunk = 0  # the last chunk consumed (or, restored, covered by the checkpoint)
        self.skip = 0  # restored: samples of chunk last_chunk + 1 the checkpoint already covers
        self.samples = 0  # 16 kHz samples consumed: the stream clock of the next chunk
        self.held = HeldChunks()
        self.replaying = False  # restored, and not yet caught up with live audio
        self.touched = time.monotonic()


class SegmenterActor(Actor):
    name = "segmenter"

    def __init__(self, bus: Bus, runtime: RuntimeSettings, cfg: SegmenterSettings, topo: topology.Topology,
                 stt_pools: pools.Pools | None = None) -> None:
        super().__init__(bus, runtime)
        self.cfg = cfg
        self.topo = topo
        self.pools = stt_pools or pools.load()  # which STT pool transcribes which language (TOLK_STT_POOLS)
        self.partitions = owned_partitions(topo.partitions, runtime.replicas, runtime.replica_index)
        self.executor = BoundedExecutor(workers=cfg.workers, backlog=len(self.partitions), name="vad")
        self.sessions: dict[str, SessionState] = {}
        self.ended: OrderedDict[str, None] = OrderedDict()  # recently finished: late chunks are acked, unused
        self.locks = {p: asyncio.Lock() for p in self.partitions}  # a partition's batch vs. upkeep
        self.held_total = dict.fromkeys(self.partitions, 0)
        spec = topo.consumer(f"segmenter-p{self.partitions[0]}") if self.partitions else None
        # Past this many held chunks in a partition the oldest are given up (acked unreplayable), so the
        # consumer never reaches max_ack_pending and stops delivering the audio that would release them.
        self.held_budget = (spec.max_ack_pending * 3 // 4) if spec else 0
        self.silero: SileroModel | None = None
        self.seg_config = SegmenterConfig(
            endpoint_ms=cfg.endpoint_ms,
            endpoint_min_ms=cfg.endpoint_min_ms,
            shrink_after_s=cfg.shrink_after_s,
            soft_max_s=cfg.soft_max_s,
            gap_ms=cfg.gap_ms,
            gap_min_ms=cfg.gap_min_ms,
            gap_db=cfg.gap_db,
            gap_db_min=cfg.gap_db_min,
            max_utterance_s=cfg.max_utterance_s,
            cap_lookback_s=cfg.cap_lookback_s,
            partial_every_ms=cfg.partial_every_ms,
            partial_growth=cfg.partial_growth,
            first_partial_ms=cfg.first_partial_ms,
            pre_speech_ms=cfg.pre_speech_ms,
            pre_resume_ms=cfg.pre_resume_ms,
            min_speech_ms=cfg.min_speech_ms,
            speculate=cfg.speculate,
        )
        self.loops = [
            PullLoop(bus.js, STREAM, f"segmenter-p{p}", AudioChunk, self._handle(p), batch=64, fetch_timeout=1.0)
            for p in self.partitions
        ]

    async def start(self) -> None:
        self.silero = await self.executor.run(SileroModel)
        for p in self.partitions:
            await self._recreate(p)
        log.info("segmenter owns partitions %s", self.partitions)

    async def _recreate(self, partition: int) -> None:
        """A fresh durable (deliver all) hands over what the last owner left unacked at once, in stream order.
        Work-queue streams allow one consumer per filter, hence delete first; only this replica owns it."""
        spec = self.topo.consumer(f"segmenter-p{partition}")
        try:
            await self.bus.js.delete_consumer(STREAM, spec.name)
        except NotFoundError:
            pass
        except Exception as exc:  # e.g. no permission: unacked audio then comes back only after the ack wait
            log.warning("%s not re-created (%s): a predecessor's unfinished utterances may be lost", spec.name, exc)
            return
        await self.bus.js.add_consumer(STREAM, topology.consumer_config(spec))

    async def run(self) -> None:
        tasks = [asyncio.create_task(loop.run(), name=f"segmenter.{loop.durable}") for loop in self.loops]
        tasks.append(asyncio.create_task(self._upkeep(), name="segmenter.upkeep"))
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
            async with self.locks[partition]:
                for d in items:  # in stream order: a session's chunks stay ordered
                    await self._chunk(d, partition)
                if self.held_total[partition] > self.held_budget:
                    await self._shed(partition)

        return handle

    async def _state(self, chunk: AudioChunk, partition: int) -> SessionState | None:
        """The session's state, restored from its checkpoint on first sight; None if it already ended."""
        state = self.sessions.get(chunk.session_id)
        if state is None:
            assert self.silero is not None
            vad = DualVad(
                WebRtcStream(self.cfg.webrtc_aggressiveness),
                self.silero.stream(self.cfg.silero_threshold),
                self.cfg.vad_vote,
                self.cfg.vad_gain,
                self.cfg.vad_silero_sure,
            )
            state = SessionState(chunk, UtteranceSegmenter(vad, self.seg_config), partition)
            checkpoint = await self._checkpoint(chunk.session_id)
            if checkpoint is not None and checkpoint.ended:
                self._forget(chunk.session_id)
                return None
            self.sessions[chunk.session_id] = state
            if checkpoint is not None:
                # Another process segmented this session before (it crashed or was restarted). The stream still
                # holds the audio after the checkpoint: replay it from there, numbering past anything that
                # process may have sent since (a re-made final keeps its final_index, and its Nats-Msg-Id
                # dedupes it). The bumped numbering is stored first, so a second crash numbers past this one.
                state.seq = checkpoint.seq + SEQ_GAP
                state.finals = checkpoint.finals
                state.last_chunk = checkpoint.last_chunk
                state.skip = checkpoint.skip
                state.samples = checkpoint.frames * FRAME
                state.replaying = True
                state.segmenter.restore(checkpoint.utterance_id, checkpoint.frames)
                await self._put(msgspec.structs.replace(checkpoint, seq=state.seq))
                log.warning("%s: resuming after final %d at %.2f s (a previous segmenter stopped mid-session)",
                            chunk.session_id, checkpoint.finals, checkpoint.frames * FRAME / 16000)
            else:
                log.info("%s: new session on partition %d (%d Hz %s, language %s: STT pool %s)", chunk.session_id,
                         partition, chunk.sample_rate, chunk.encoding.value, chunk.language,
                         self.pools.route(chunk.language).name)
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

    async def _put(self, checkpoint: SegmenterCheckpoint) -> bool:
        try:
            await (await self.bus.kv(CHECKPOINTS)).put(checkpoint.session_id, encode(checkpoint))
            return True
        except Exception as exc:  # the next release writes it again; until then the chunks stay held
            log.warning("%s: checkpoint not saved: %s", checkpoint.session_id, exc)
            return False

    async def _release(self, state: SessionState, resume: Resume, n: int, ended: bool = False) -> None:
        """Checkpoint at `resume`, then ack the `n` oldest held chunks, which it covers."""
        seg = state.segmenter
        checkpoint = SegmenterCheckpoint(
            session_id=state.session_id, seq=state.seq, finals=state.finals,
            # A replay re-opens the utterance that is open now, under the same id.
            utterance_id=seg.utterance_id - (1 if seg.is_open and not ended else 0),
            frames=resume.frames, last_chunk=resume.last_chunk, skip=resume.skip, ended=ended)
        if not await self._put(checkpoint):
            return
        for h in state.held.pop(n):
            await h.msg.ack()
            self.held_total[state.partition] -= 1

    async def _settle(self, state: SessionState, final: bool) -> None:
        """Release what no replay needs: after a final at once, in silence once a second of it piled up."""
        sample = state.segmenter.needed_frame * FRAME
        n = state.held.done_before(sample)
        if n and (final or state.held.samples_in(n) >= RELEASE_SAMPLES):
            await self._release(state, state.held.resume_at(sample, state.last_chunk), n)

    async def _release_all(self, state: SessionState, ended: bool) -> None:
        resume = Resume(state.last_chunk, 0, state.segmenter.frames_consumed)
        await self._release(state, resume, len(state.held), ended=ended)

    async def _shed(self, partition: int) -> None:
        """Too many chunks held in this partition: the session holding most gives up its older half."""
        state = max((st for st in self.sessions.values() if st.partition == partition),
                    key=lambda st: len(st.held), default=None)
        if state is None or len(state.held) < 2:
            return
        sample = -(-state.held.nth_start(len(state.held) // 2) // FRAME) * FRAME
        n = state.held.done_before(sample)
        log.warning("%s: %d chunks held in partition %d; %d given up (a crash now loses them)",
                    state.session_id, self.held_total[partition], partition, n)
        metrics.count_error("segmenter_held_shed")
        await self._release(state, state.held.resume_at(sample, state.last_chunk), n)

    def _drop(self, sid: str) -> None:
        state = self.sessions.pop(sid, None)
        if state is not None:  # anything a failed checkpoint left unacked comes back after the ack wait
            self.held_total[state.partition] -= len(state.held)

    def _forget(self, sid: str) -> None:
        self._drop(sid)
        self.ended[sid] = None
        while len(self.ended) > 10_000:
            self.ended.popitem(last=False)

    async def _chunk(self, d: Delivery[AudioChunk], partition: int) -> None:
        chunk = d.msg
        if chunk.session_id in self.ended:
            await d.raw.ack()
            return
        state = await self._state(chunk, partition)
        if state is None:
            await d.raw.ack()
            return
        if chunk.chunk_seq <= state.last_chunk:
            held = state.held.find(d.raw.metadata.sequence.stream)
            if held is not None:  # redelivered while held (a nak): keep holding, through the newest delivery
                held.msg = d.raw
            else:
                await d.raw.ack()  # covered by the checkpoint already
            return
        if chunk.language != state.language:
            log.info("%s: language %s -> %s (STT pool %s)", state.session_id, state.language, chunk.language,
                     self.pools.route(chunk.language).name)
        state.language = chunk.language  # `configure` may change it: applies from the next cut (and its pool)
        state.vocabulary = chunk.vocabulary  # likewise
        state.diarize, state.max_speakers = chunk.diarize, chunk.max_speakers
        if chunk.sample_rate != state.sample_rate:
            log.error("%s: sample rate changed mid-session; chunk dropped", chunk.session_id)
            await d.raw.term()
            return
        skip = state.skip if chunk.chunk_seq == state.last_chunk + 1 else 0
        state.skip = 0
        state.last_chunk = chunk.chunk_seq
        state.touched = time.monotonic()
        if state.replaying and chunk.received_at > time.time() - FRESH_S:
            state.replaying = False
        begin = state.samples
        cuts, used = await self.executor.run(self._segment, state, chunk, skip)
        state.samples += used
        state.held.add(Held(chunk.chunk_seq, begin, state.samples, d.raw, time.monotonic()))
        self.held_total[partition] += 1
        for cut in cuts:
            await self._emit(state, cut)
        if chunk.flush and not chunk.end and not any(cut.final for cut in cuts):
            await self._flushed(state, partition)
        if not chunk.end:
            await self._settle(state, final=chunk.flush or any(cut.final for cut in cuts))
            return
        state.seq += 1
        await self.bus.publish(
            f"tolk.transcript.{partition}.{state.session_id}",
            Transcript(session_id=state.session_id, utterance_id=state.segmenter.utterance_id,
                       seq=state.seq, final_index=state.finals + 1, kind=ResultKind.END, partition=partition,
                       stream_id=state.stream_id),
            msg_id=f"{state.session_id}:end",  # one END however often a replay re-makes it
        )
        await self._release_all(state, ended=True)
        self._forget(state.session_id)

    async def _flushed(self, state: SessionState, partition: int) -> None:
        """A flush with no utterance open (or too short to transcribe) still gets its final, empty: the client
        learns every final before its flush is out. It skips STT as END does, numbered like any final."""
        state.seq += 1
        state.finals += 1
        at = round(state.samples / 16000, 3)
        await self.bus.publish(
            f"tolk.transcript.{partition}.{state.session_id}",
            Transcript(session_id=state.session_id, utterance_id=state.segmenter.utterance_id, seq=state.seq,
                       final_index=state.finals, kind=ResultKind.FINAL, partition=partition, start=at, end=at,
                       stream_id=state.stream_id, endpoint=Endpoint.FLUSH,
                       language="" if state.language == "auto" else state.language),
            msg_id=f"{state.session_id}:{state.seq}",  # as STT's transcripts: a replay re-makes the same one
        )

    @staticmethod
    def _segment(state: SessionState, chunk: AudioChunk, skip: int) -> tuple[list[Cut], int]:
        """VAD over one chunk (`skip`: leading 16 kHz samples a restored checkpoint covers); cuts and samples used."""
        pcm = decode_pcm(chunk.data, chunk.encoding)
        if not state.replaying:
            AUDIO_SECONDS.inc(len(pcm) / chunk.sample_rate)
        samples = state.resampler.push(pcm, last=chunk.end)[skip:]
        # Every chunk carries the session's endpointing (a replay re-applies it): from the next utterance on.
        state.segmenter.endpointing(chunk.endpoint_ms, chunk.max_utterance_s)
        cuts = state.segmenter.push(samples, chunk.received_at)
        if chunk.end:
            cuts += state.segmenter.flush(chunk.received_at)
        elif chunk.flush:
            cuts += state.segmenter.force_end()
        return cuts, len(samples)

    async def _emit(self, state: SessionState, cut: Cut) -> None:
        if state.replaying and not cut.final:
            return  # stale audio: STT would only skip these partials (and early decodes)
        state.seq += 1
        # A speculative cut travels with the finals (same lane and pool), under its own id.
        kind = SegmentKind.FINAL if cut.final or cut.speculative else SegmentKind.PARTIAL
        final_index = state.finals + 1
        if cut.final:
            state.finals += 1
        seg = Segment(
            session_id=state.session_id, utterance_id=cut.utterance_id, seq=state.seq,
            final_index=final_index, kind=kind,
            audio=to_int16_bytes(cut.audio), start=round(cut.start, 3), end=round(cut.end, 3),
            language=state.language, speech_end_wall=cut.speech_end_wall, partition=state.partition,
            speech_start=round(cut.speech_start, 3), endpoint=cut.endpoint, stream_id=state.stream_id,
            speculative=cut.speculative, prompt=state.prompt, vocabulary=state.vocabulary,
            diarize=state.diarize, max_speakers=state.max_speakers,
        )
        # A final is deduped by its index: one a dead segmenter published before its checkpoint is not re-made.
        msg_id = f"{state.session_id}:f{final_index}" if cut.final else f"{state.session_id}:{state.seq}"
        # The session's language now picks the STT pool: a session switching language moves pools between
        # cuts; fan-out still releases its finals by final_index, whichever pool transcribed them.
        pool = self.pools.route(state.language).name
        await self.bus.publish(pools.subject(kind.value, pool, state.partition, state.session_id), seg, msg_id=msg_id)
        if cut.final and state.diarize:  # the diarizer labels it while STT transcribes it
            await self.bus.publish(f"tolk.diarize.{state.partition}.{state.session_id}", seg, msg_id=msg_id)
        SEGMENTS.labels("speculative" if cut.speculative else kind.value).inc()

    async def _upkeep(self) -> None:
        """Held chunks are marked in progress before the ack wait; a session idle for `session_idle_s` (its
        client vanished without `stop`) has its open utterance finalised, its chunks acked and its state dropped."""
        while True:
            await asyncio.sleep(UPKEEP_S)
            for partition, lock in self.locks.items():
                async with lock:
                    await self._upkeep_partition(partition)

    async def _upkeep_partition(self, partition: int) -> None:
        now = time.monotonic()
        for state in [st for st in self.sessions.values() if st.partition == partition]:
            if state.touched < now - self.cfg.session_idle_s:
                log.info("%s: idle for %.0fs; flushed and dropped", state.session_id, self.cfg.session_idle_s)
                for cut in await self.executor.run(state.segmenter.flush, time.time()):
                    await self._emit(state, cut)
                await self._release_all(state, ended=False)
                self._drop(state.session_id)
                continue
            for h in state.held:
                if h.since < now - 2 * UPKEEP_S:
                    await h.msg.in_progress()
                    h.since = now


async def create(bus: Bus, runtime: RuntimeSettings) -> Actor:
    return SegmenterActor(bus, runtime, settings.load(SegmenterSettings), topology.load())
