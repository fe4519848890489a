"""Fan-out actor: consumes results (transcripts + translations) of its partitions, publishes them
in order per session."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from prometheus_client import Counter, Histogram

from actors.fanout.ordering import SessionOrder
from actors.fanout.speakers import SpeakerGate
from actors.runtime import channels, settings, topology
from actors.runtime.actor import Actor, RuntimeSettings
from actors.runtime.bus import Bus
from actors.runtime.consumer import Delivery, PullLoop
from actors.runtime.partition import owned_partitions
from schemas import ClientResult, ResultKind, SpeakerTurns, Transcript, results_subject, stream_of

log = logging.getLogger("tolk.fanout")

PROGRESS_BUCKET = "tolk_fanout"

LATENCY = Histogram("tolk_result_latency_seconds", "End of speech (edge clock) to the result going out to its "
                    "clients: the server's whole share of caption latency, by kind.", ["kind"],
                    buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0))
RESULTS = Counter("tolk_results", "Results sent to clients, by kind.", ["kind"])
SPEAKER_WAIT = Histogram("tolk_speaker_wait_seconds", "How long a diarized final was held for its speaker labels "
                         "(0 when they came first): what diarization adds to a final's latency.",
                         buckets=(0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0))
SPEAKERS_LATE = Counter("tolk_speakers_late", "Diarized finals sent without their speaker labels (the diarizer "
                        "was later than TOLK_SPEAKER_WAIT_S); each gets a SPEAKERS correction when they come.")


@dataclass
class FanoutSettings:
    # Skip a missing final after this long (never expected: logged). Above the worst redelivery chain: a
    # crashed STT then a crashed translator, each redelivering after its 15 s ack wait.
    gap_timeout_s: float = 45.0
    session_idle_s: float = 600.0
    # A diarized final waits this long for its speaker labels (the diarizer runs beside STT, usually ahead),
    # then goes out unlabelled (`speakers_late`), corrected when they come.
    speaker_wait_s: float = 1.0


class FanoutActor(Actor):
    name = "fanout"

    def __init__(self, bus: Bus, runtime: RuntimeSettings, cfg: FanoutSettings, topo: topology.Topology) -> None:
        super().__init__(bus, runtime)
        self.cfg = cfg
        self.sessions: dict[str, SessionOrder] = {}
        self.gates: dict[str, SpeakerGate] = {}  # per session: results on their way out, labels merged
        self.diarized: set[str] = set()
        # Per session: results whose output waits in its gate. Acked, and progress stored, once it is out, so a
        # fan-out that dies while a final waits for its labels gets it redelivered instead of losing it.
        self.unacked: dict[str, list[Msg]] = {}
        self.wake = asyncio.Event()
        partitions = owned_partitions(topo.partitions, runtime.replicas, runtime.replica_index)
        self.loops = [
            PullLoop(bus.js, "TOLK_RESULTS", f"fanout-p{p}", Transcript, self._handle, batch=256, fetch_timeout=1.0)
            for p in partitions
        ]
        self.speaker_loops = [
            PullLoop(bus.js, "TOLK_SPEAKERS", f"fanout-speakers-p{p}", SpeakerTurns, self._labels, batch=256)
            for p in partitions
        ]

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        tasks = [asyncio.create_task(loop.run(), name=f"fanout.{loop.durable}") for loop in self.loops]
        speakers = [asyncio.create_task(loop.run(), name=f"fanout.{loop.durable}") for loop in self.speaker_loops]
        sweeper = asyncio.create_task(self._sweep(), name="fanout.sweep")
        timer = asyncio.create_task(self._speaker_timer(), name="fanout.speakers")
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in (sweeper, timer, *speakers, *tasks):
                task.cancel()
            await asyncio.gather(sweeper, timer, *speakers, *tasks, return_exceptions=True)

    async def drain(self) -> None:
        for loop in self.loops:
            loop.stop()
        for speakers in self.speaker_loops:
            speakers.stop()

    async def _handle(self, items: list[Delivery[Transcript]]) -> None:
        now = time.monotonic()
        for d in items:
            t = d.msg
            if t.diarize:
                self.diarized.add(t.session_id)
            order = self.sessions.get(t.session_id)
            if order is None:
                next_final = await self._progress(t.session_id)
                order = self.sessions[t.session_id] = SessionOrder(t.session_id, next_final=next_final)
                log.info("%s: routing results (partition %d%s)", t.session_id, t.partition,
                         f", resuming at final {next_final}" if next_final > 1 else "")
            released = order.next_final
            await self._deliver(order, order.offer(t, now))
            gate = self.gates.get(t.session_id)
            if gate is not None and gate.queue:  # a final waits for its labels: settled when it is out
                self.unacked.setdefault(t.session_id, []).append(d.raw)
                continue
            if order.next_final != released or t.session_id in self.unacked:
                await self._save_progress(order)  # stored before the ack: a restarted fan-out continues from here
            await self._ack_held(t.session_id)
            await d.raw.ack()

    async def _ack_held(self, sid: str) -> None:
        for raw in self.unacked.pop(sid, []):
            await raw.ack()

    async def _gate_released(self, sid: str, gate: SpeakerGate) -> None:
        """What waited in `gate` went out (labels came, or the wait ended): its inputs are settled now."""
        if gate.queue or sid not in self.unacked:
            return
        order = self.sessions.get(sid)
        if order is not None:
            await self._save_progress(order)
        await self._ack_held(sid)

    async def _progress(self, sid: str) -> int:
        """Where a previous fan-out process left this session: finals below it were delivered (and acked)."""
        try:
            entry = await (await self.bus.kv(PROGRESS_BUCKET)).get(sid)
            return int(entry.value or b"1")
        except (KeyNotFoundError, KeyDeletedError):
            return 1
        except Exception as exc:  # KV away: start from 1 (earlier finals, if any, come once more; the edge drops them)
            log.warning("%s: fan-out progress unknown: %s", sid, exc)
            return 1

    async def _save_progress(self, order: SessionOrder) -> None:
        try:
            await (await self.bus.kv(PROGRESS_BUCKET)).put(order.session_id, str(order.next_final).encode())
        except Exception as exc:  # the next release writes it again; only a crash right now would repeat finals
            log.warning("%s: fan-out progress not saved: %s", order.session_id, exc)

    async def _labels(self, items: list[Delivery[SpeakerTurns]]) -> None:
        """A final's speaker labels: merged into it if it is waiting (or still to come), else sent as a correction."""
        now = time.monotonic()
        for d in items:
            t = d.msg
            self.diarized.add(t.session_id)
            gate = self.gates.setdefault(t.session_id, SpeakerGate(self.cfg.speaker_wait_s))
            await self._send(gate.labels(t, now), gate)
            await self._gate_released(t.session_id, gate)
            await d.raw.ack()

    async def _deliver(self, order: SessionOrder, results: list[ClientResult]) -> None:
        sid = order.session_id
        if sid in self.diarized or sid in self.gates:
            gate = self.gates.setdefault(sid, SpeakerGate(self.cfg.speaker_wait_s))
            now = time.monotonic()
            out: list[ClientResult] = []
            for r in results:
                out += gate.offer(r, sid in self.diarized, now)
            await self._send(out, gate)
            await self._gate_released(sid, gate)
            if gate.next_deadline() is not None:
                self.wake.set()
        else:
            await self._send(results)
        if order.ended:
            self.sessions.pop(sid, None)

    async def _speaker_timer(self) -> None:
        """Releases finals whose labels are past their wait (checked every 50 ms while any is waiting)."""
        while True:
            await self.wake.wait()
            await asyncio.sleep(0.05)
            now = time.monotonic()
            waiting = False
            for sid, gate in list(self.gates.items()):
                deadline = gate.next_deadline()
                if deadline is not None and deadline <= now:
                    await self._send(gate.release(now), gate)
                    await self._gate_released(sid, gate)
                    deadline = gate.next_deadline()
                waiting |= deadline is not None
            if not waiting:
                self.wake.clear()

    async def _send(self, results: list[ClientResult], gate: SpeakerGate | None = None) -> None:
        if gate is not None:
            for waited in gate.waited:
                SPEAKER_WAIT.observe(waited)
            gate.waited.clear()
        for r in results:
            now = time.time()
            r = msgspec.structs.replace(r, published_at=now)
            stream = stream_of(r)
            if r.stream_id and r.kind is ResultKind.FINAL and r.text:
                # A broadcast channel's finals are also kept (last 50 per channel) for late joiners, and kept
                # *before* they go live: a listener joining now reads it back or gets it live, never neither
                # (the edge drops the live copy of what it replayed).
                await self.bus.publish(channels.captions_subject(stream), r, msg_id=f"{r.session_id}:c{r.seq}")
            await self.bus.send(results_subject(stream), r)
            RESULTS.labels(r.kind.value).inc()
            if r.speakers_late:
                SPEAKERS_LATE.inc()
            if r.speech_end_wall and r.kind not in (ResultKind.END, ResultKind.SPEAKERS):
                LATENCY.labels(r.kind.value).observe(max(0.0, now - r.speech_end_wall))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for order in list(self.sessions.values()):
                released = order.skip_gap(now, self.cfg.gap_timeout_s)
                if released:
                    log.warning("%s: skipped a gap before seq %d", order.session_id, released[0].seq)
                    await self._deliver(order, released)
                elif now - order.touched > self.cfg.session_idle_s:
                    self.sessions.pop(order.session_id, None)
            for sid in [sid for sid, gate in self.gates.items()
                        if sid not in self.sessions and not gate.queue and now - gate.touched > 60]:
                del self.gates[sid]  # ended a minute ago (corrections after END reach no one) or idle
                self.diarized.discard(sid)


async def create(bus: Bus, runtime: RuntimeSettings) -> Actor:
    return FanoutActor(bus, runtime, settings.load(FanoutSettings), topology.load())
