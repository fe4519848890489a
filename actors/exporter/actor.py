"""Exporter: JetStream and actor health as Prometheus metrics, since nats-server has no /metrics.

Every `interval_s` it reads each Tolk stream's and durable consumer's state (pending = consumer lag,
ack-pending, redelivered) and the actors' heartbeats. It also follows MAX_DELIVERIES advisories, the
messages a consumer gave up on: each is counted and copied to `tolk.deadletter.<stream>.<consumer>`
(stream TOLK_DEADLETTER, kept a week) with where it came from in its headers. One replica is enough:
the numbers come from the server, not from it.

It also puts back the transient streams (TOLK_AUDIO, TOLK_SEGMENTS) with their durables when they are gone: a
standalone nats-server keeps memory streams only while it runs (docs/operations.md#durability), and nothing
else would re-create them after a restart of the server alone (compose restarting its `nats`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter as Tally
from dataclasses import dataclass

from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge

from actors.runtime import pools, settings, topology
from actors.runtime.actor import Actor, RuntimeSettings, heartbeats
from actors.runtime.bus import Bus

log = logging.getLogger("tolk.exporter")

ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"
DEADLETTER_STREAM = "TOLK_DEADLETTER"

PENDING = Gauge("tolk_jetstream_consumer_pending_messages", "Messages in the stream not yet delivered to this "
                "durable consumer: its lag.", ["stream", "consumer"])
ACK_PENDING = Gauge("tolk_jetstream_consumer_ack_pending_messages", "Messages delivered and not yet acknowledged.",
                    ["stream", "consumer"])
REDELIVERED = Gauge("tolk_jetstream_consumer_redelivered_messages", "Messages currently being redelivered.",
                    ["stream", "consumer"])
STREAM_MESSAGES = Gauge("tolk_jetstream_stream_messages", "Messages stored in the stream.", ["stream"])
STREAM_BYTES = Gauge("tolk_jetstream_stream_bytes", "Bytes stored in the stream.", ["stream"])
DEAD_LETTERS = Counter("tolk_dead_letters", "Messages a consumer gave up on after max deliveries.",
                       ["stream", "consumer"])
INSTANCES = Gauge("tolk_actor_instances", "Live actor processes by readiness, from their heartbeats.",
                  ["actor", "ready"])
POOL_INSTANCES = Gauge("tolk_stt_pool_instances", "Live STT processes per STT pool by readiness, from their "
                       "heartbeats: a pool with none ready leaves its languages untranscribed.", ["pool", "ready"])
LAST_SCRAPE = Gauge("tolk_exporter_last_scrape_timestamp_seconds", "When NATS was last read successfully: the "
                    "other numbers are this old (an alert can tell stale from zero).")
SCRAPE_ERRORS = Counter("tolk_exporter_scrape_errors", "Failed reads of NATS state.")
ACTORS = ("edge", "segmenter", "stt", "translator", "fanout", "ingest")


@dataclass
class ExporterSettings:
    exporter_interval_s: float = 5.0
    exporter_streams_prefix: str = "TOLK_"
    nats_replicas: int = 1  # of a transient stream it re-creates: as `tolk nats apply --replicas`


class ExporterActor(Actor):
    name = "exporter"

    def __init__(self, bus: Bus, runtime: RuntimeSettings, cfg: ExporterSettings) -> None:
        super().__init__(bus, runtime)
        self.cfg = cfg
        self._stop = asyncio.Event()
        self._seen: set[tuple[str, str]] = set()
        self.pools = pools.load().names  # reported with zeros too, like the actors
        self.topo = topology.load()

    async def start(self) -> None:
        await self.bus.nc.subscribe(ADVISORY, cb=self._on_max_deliveries)
        await self.scrape()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.cfg.exporter_interval_s)
            except TimeoutError:
                pass
            if not self._stop.is_set():
                try:
                    await self.scrape()
                except Exception as exc:  # NATS away: keep the last values, try again next round
                    SCRAPE_ERRORS.inc()
                    log.warning("scrape failed: %s", exc)

    async def drain(self) -> None:
        self._stop.set()

    async def scrape(self) -> None:
        seen: set[tuple[str, str]] = set()
        infos = await self.bus.js.streams_info()
        names = {info.config.name or "" for info in infos}
        if any(s.transient and s.name not in names for s in self.topo.streams):
            await topology.restore_transient(self.bus.js, self.topo, self.cfg.nats_replicas, present=names)
        for info in infos:
            stream = info.config.name or ""
            if not stream.startswith(self.cfg.exporter_streams_prefix):
                continue  # KV buckets and others' streams
            STREAM_MESSAGES.labels(stream).set(info.state.messages)
            STREAM_BYTES.labels(stream).set(info.state.bytes)
            for c in await self.bus.js.consumers_info(stream):
                if not c.config.durable_name:
                    continue  # ephemeral (a late joiner's replay)
                key = (stream, c.config.durable_name)
                seen.add(key)
                PENDING.labels(*key).set(c.num_pending or 0)
                ACK_PENDING.labels(*key).set(c.num_ack_pending or 0)
                REDELIVERED.labels(*key).set(c.num_redelivered or 0)
        for key in self._seen - seen:  # a consumer that went away must not keep reporting its last lag
            for gauge in (PENDING, ACK_PENDING, REDELIVERED):
                gauge.remove(*key)
        self._seen = seen
        await self._actors()
        LAST_SCRAPE.set_to_current_time()

    async def _actors(self) -> None:
        beats = await heartbeats(self.bus)
        counts: Tally[tuple[str, str]] = Tally((beat.actor, "true" if beat.ready else "false") for beat in beats)
        for actor in ACTORS:  # zero rows too, so "no ready stt" is a 0 an alert can see, not a gap
            for ready in ("true", "false"):
                INSTANCES.labels(actor, ready).set(counts.get((actor, ready), 0))
        in_pool: Tally[tuple[str, str]] = Tally((beat.info.get("pool", ""), "true" if beat.ready else "false")
                                                for beat in beats if beat.actor == "stt")
        for pool in dict.fromkeys([*self.pools, *(p for p, _ in in_pool if p)]):
            for ready in ("true", "false"):
                POOL_INSTANCES.labels(pool, ready).set(in_pool.get((pool, ready), 0))

    async def _on_max_deliveries(self, msg: Msg) -> None:
        try:
            event = json.loads(msg.data)
            stream, consumer = str(event["stream"]), str(event["consumer"])
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable advisory on %s", msg.subject)
            return
        DEAD_LETTERS.labels(stream, consumer).inc()
        seq = int(event.get("stream_seq", 0))
        log.error("%s/%s gave up on stream sequence %d after %s deliveries", stream, consumer, seq,
                  event.get("deliveries"))
        if stream == DEADLETTER_STREAM or not seq:
            return
        try:
            original = await self.bus.js.get_msg(stream, seq)
            await self.bus.js.publish(
                f"tolk.deadletter.{stream}.{consumer}", original.data or b"",
                headers={"Nats-Msg-Id": f"{stream}:{consumer}:{seq}", "Tolk-Stream": stream,
                         "Tolk-Consumer": consumer, "Tolk-Subject": original.subject or "",
                         "Tolk-Stream-Seq": str(seq), "Tolk-Deliveries": str(event.get("deliveries", ""))})
        except Exception as exc:  # already gone (age, work queue purge): the count and the log remain
            log.warning("%s/%d: dead letter not copied: %s", stream, seq, exc)


async def create(bus: Bus, runtime: RuntimeSettings) -> Actor:
    return ExporterActor(bus, runtime, settings.load(ExporterSettings))
