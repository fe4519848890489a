"""Load `nats/topology.toml` and apply it idempotently (create, or update when it changed).

Consumers may be templates: `{p}` expands per partition, `{pool}` per STT pool of `TOLK_STT_POOLS` (read at
load, actors/runtime/pools.py), so a pool set chosen at deploy time gets its durables from `tolk nats apply`.

Streams marked `transient` (work in flight that no client was promised yet: raw audio, segments) are stored as
TOLK_NATS_TRANSIENT_STORAGE says, `memory` by default: with `sync_interval: always` their per-frame writes
would each wait for an fsync (docs/operations.md#durability).
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from actors.runtime import pools as stt_pools
from actors.runtime import settings
from actors.runtime.declarations import nats_file

log = logging.getLogger("tolk.topology")

DEFAULT_PATH = nats_file("topology.toml")


class StreamSpec(msgspec.Struct, frozen=True):
    name: str
    subjects: list[str]
    retention: Literal["limits", "workqueue", "interest"] = "limits"
    storage: Literal["file", "memory"] = "file"
    max_age_s: float = 0
    max_bytes: int = -1
    max_msg_size: int = -1
    discard: Literal["old", "new"] = "old"
    duplicate_window_s: float = 120
    max_msgs_per_subject: int = -1
    # Work in flight, deleted on ack, that no client was sent anything from yet: its storage is the operator's
    # choice (TopologySettings), not `storage`.
    transient: bool = False


@dataclass
class TopologySettings:
    """Env: TOLK_NATS_TRANSIENT_STORAGE. `memory`: transient streams never touch the disk (a restarted standalone
    server drops them, and the exporter re-creates them); `file`: on disk, fsynced per `sync_interval` like the rest."""

    nats_transient_storage: Literal["memory", "file"] = "memory"


class ConsumerSpec(msgspec.Struct, frozen=True):
    stream: str
    name: str
    filter_subject: str
    ack_wait_s: float = 30
    max_deliver: int = 5
    max_ack_pending: int = 1000
    # Durables this declaration replaced (e.g. the single-pool `stt-final`): `apply` deletes them once drained.
    replaces: list[str] = []

    @property
    def partitioned(self) -> bool:
        return "{p}" in self.name

    @property
    def pooled(self) -> bool:
        return "{pool}" in self.name

    def expand(self, p: int | None = None, pool: str | None = None) -> ConsumerSpec:
        return msgspec.structs.replace(self, name=self.name.format(p=p, pool=pool),
                                       filter_subject=self.filter_subject.format(p=p, pool=pool))

    def for_partition(self, p: int) -> ConsumerSpec:
        return self.expand(p=p)

    def superseded(self, name: str) -> bool:
        """`name` is a durable of this template's shape (any pool / partition) or one it replaced."""
        pattern = re.escape(self.name).replace(r"\{pool\}", "[a-z0-9-]+").replace(r"\{p\}", "[0-9]+")
        return name in self.replaces or (self.pooled and re.fullmatch(pattern, name) is not None)


class KVSpec(msgspec.Struct, frozen=True):
    bucket: str
    ttl_s: float = 0
    history: int = 1
    storage: Literal["file", "memory"] = "file"


class Topology(msgspec.Struct, frozen=True):
    partitions: int
    streams: list[StreamSpec]
    consumers: list[ConsumerSpec]
    kv: list[KVSpec]
    pools: tuple[str, ...] = ()  # STT pool names, for `{pool}` consumers (TOLK_STT_POOLS, filled in by load)

    def expanded_consumers(self) -> list[ConsumerSpec]:
        out: list[ConsumerSpec] = []
        for c in self.consumers:
            for p in range(self.partitions) if c.partitioned else [None]:
                out.extend(c.expand(p, pool) for pool in (self.pools if c.pooled else [None]))
        return out

    def consumer(self, name: str) -> ConsumerSpec:
        for c in self.expanded_consumers():
            if c.name == name:
                return c
        raise KeyError(name)


def load(path: Path | None = None, pools: stt_pools.Pools | None = None,
         transient_storage: Literal["memory", "file"] | None = None) -> Topology:
    """The topology file, with the STT pools (`pools`, else TOLK_STT_POOLS / TOLK_MODEL) for `{pool}` and the
    transient streams' storage (`transient_storage`, else TOLK_NATS_TRANSIENT_STORAGE)."""
    path = path or Path(os.environ.get("TOLK_TOPOLOGY", DEFAULT_PATH))
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    topo = msgspec.convert(raw, Topology)
    if topo.partitions < 1:
        raise ValueError("partitions must be >= 1")
    storage = transient_storage or settings.load(TopologySettings).nats_transient_storage
    streams = [msgspec.structs.replace(s, storage=storage) if s.transient else s for s in topo.streams]
    return msgspec.structs.replace(topo, streams=streams, pools=(pools or stt_pools.load()).names)


def _stream_config(s: StreamSpec, replicas: int) -> api.StreamConfig:
    return api.StreamConfig(
        name=s.name,
        subjects=s.subjects,
        retention=api.RetentionPolicy(s.retention),
        storage=api.StorageType(s.storage),
        max_age=s.max_age_s or None,
        max_bytes=s.max_bytes,
        max_msg_size=s.max_msg_size,
        discard=api.DiscardPolicy(s.discard),
        duplicate_window=s.duplicate_window_s,
        max_msgs_per_subject=s.max_msgs_per_subject,
        num_replicas=replicas,
    )


def consumer_config(c: ConsumerSpec) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=c.name,
        name=c.name,
        filter_subject=c.filter_subject,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=c.ack_wait_s,
        max_deliver=c.max_deliver,
        max_ack_pending=c.max_ack_pending,
    )


async def apply(js: JetStreamContext, topo: Topology, replicas: int = 1) -> list[str]:
    """Create or update everything; returns one line per object for logs and `tolk nats apply`."""
    report: list[str] = []
    for s in topo.streams:
        cfg = _stream_config(s, replicas)
        try:
            info = await js.stream_info(s.name)
        except NotFoundError:
            await js.add_stream(cfg)
            report.append(f"stream {s.name}: created")
            continue
        if info.config.storage != cfg.storage:
            report.append(await _restore_storage(js, s, cfg, info))
            continue
        await js.update_stream(cfg)
        report.append(f"stream {s.name}: up to date")
    report += await _retire(js, topo)
    for c in topo.expanded_consumers():
        await js.add_consumer(c.stream, consumer_config(c))  # server creates or updates
        report.append(f"consumer {c.stream}/{c.name}: applied")
    for kv in topo.kv:
        kv_cfg = api.KeyValueConfig(
            bucket=kv.bucket,
            ttl=kv.ttl_s or None,
            history=kv.history,
            storage=api.StorageType(kv.storage),
            replicas=replicas,
        )
        try:
            await js.create_key_value(kv_cfg)
            report.append(f"kv {kv.bucket}: applied")
        except BadRequestError as exc:
            # Config drift on an existing bucket: update its backing stream in place.
            info = await js.stream_info(f"KV_{kv.bucket}")
            cfg = info.config
            cfg.max_age = kv.ttl_s or None
            cfg.max_msgs_per_subject = kv.history
            await js.update_stream(cfg)
            report.append(f"kv {kv.bucket}: updated ({exc.description})")
    for line in report:
        log.info("%s", line)
    return report


async def _restore_storage(js: JetStreamContext, s: StreamSpec, cfg: api.StreamConfig,
                           info: api.StreamInfo) -> str:
    """NATS cannot change a stream's storage in place. A transient stream is re-created once it is empty (its
    consumers come back with the rest of `apply`); one still holding work, or a promised stream, is left as it
    is: deleting it would drop audio not yet transcribed, or what clients were promised."""
    have, want = api.StorageType(info.config.storage).value, s.storage
    if not s.transient:
        return (f"stream {s.name}: stored on {have}, declared {want}; left as it is (NATS cannot move a stream: "
                f"back it up, delete it and apply again)")
    if info.state.messages:
        return (f"stream {s.name}: stored on {have}, TOLK_NATS_TRANSIENT_STORAGE says {want}; kept while it "
                f"holds {info.state.messages} message(s) (apply again once drained)")
    await js.delete_stream(s.name)
    await js.add_stream(cfg)
    return f"stream {s.name}: re-created on {want} (was {have}, empty)"


async def restore_transient(js: JetStreamContext, topo: Topology, replicas: int = 1,
                            present: set[str] | None = None) -> list[str]:
    """Re-create transient streams that are gone, with their declared durables. A standalone nats-server keeps
    memory streams only while it runs: after its restart the exporter calls this (the segmenter and STT fetch
    from the new durables as soon as they exist); an R3 cluster keeps them while a majority of its servers runs.
    `present`: stream names just listed, to skip the lookups."""
    report: list[str] = []
    for s in topo.streams:
        if not s.transient or (present is not None and s.name in present):
            continue
        try:
            await js.stream_info(s.name)
            continue
        except NotFoundError:
            await js.add_stream(_stream_config(s, replicas))
        for c in topo.expanded_consumers():
            if c.stream == s.name:
                await js.add_consumer(c.stream, consumer_config(c))
        report.append(f"stream {s.name}: re-created on {s.storage} with its consumers (it was gone)")
        log.warning("%s", report[-1])
    return report


async def _retire(js: JetStreamContext, topo: Topology) -> list[str]:
    """Delete durables no longer declared (a pool taken out, the pre-pool `stt-final`) once nothing is pending
    on them. One still holding messages is kept: an old replica may still be working through them, and
    deleting it would strand them; `apply` again once it drained (TOLK_SEGMENTS keeps messages 5 minutes)."""
    wanted = {(c.stream, c.name) for c in topo.expanded_consumers()}
    templates = [c for c in topo.consumers if c.pooled or c.replaces]
    report: list[str] = []
    for stream in dict.fromkeys(c.stream for c in templates):
        try:
            existing = await js.consumers_info(stream)
        except NotFoundError:
            continue
        for info in existing:
            name = info.config.durable_name or info.name
            if (stream, name) in wanted or not any(t.superseded(name) for t in templates if t.stream == stream):
                continue
            if info.num_pending or info.num_ack_pending:
                report.append(f"consumer {stream}/{name}: no longer declared; kept while {info.num_pending} "
                              f"pending, {info.num_ack_pending} unacked (apply again once drained)")
                continue
            await js.delete_consumer(stream, name)
            report.append(f"consumer {stream}/{name}: deleted (no longer declared)")
    return report
