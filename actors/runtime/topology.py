"""Load `nats/topology.toml` and apply it idempotently (create, or update when it changed).

Consumers may be templates: `{p}` expands per partition, `{pool}` per STT pool of `TOLK_STT_POOLS` (read at
load, actors/runtime/pools.py), so a pool set chosen at deploy time gets its durables from `tolk nats apply`.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

import msgspec
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from actors.runtime import pools as stt_pools
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


def load(path: Path | None = None, pools: stt_pools.Pools | None = None) -> Topology:
    """The topology file, with the STT pools (`pools`, else TOLK_STT_POOLS / TOLK_MODEL) for `{pool}`."""
    path = path or Path(os.environ.get("TOLK_TOPOLOGY", DEFAULT_PATH))
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    topo = msgspec.convert(raw, Topology)
    if topo.partitions < 1:
        raise ValueError("partitions must be >= 1")
    return msgspec.structs.replace(topo, pools=(pools or stt_pools.load()).names)


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
            await js.stream_info(s.name)
            await js.update_stream(cfg)
            report.append(f"stream {s.name}: up to date")
        except NotFoundError:
            await js.add_stream(cfg)
            report.append(f"stream {s.name}: created")
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
