"""Load `nats/topology.toml` and apply it idempotently (create, or update when it changed)."""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Literal

import msgspec
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

log = logging.getLogger("tolk.topology")

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "nats" / "topology.toml"


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

    @property
    def partitioned(self) -> bool:
        return "{p}" in self.name

    def for_partition(self, p: int) -> ConsumerSpec:
        return msgspec.structs.replace(
            self, name=self.name.format(p=p), filter_subject=self.filter_subject.format(p=p)
        )


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

    def expanded_consumers(self) -> list[ConsumerSpec]:
        out: list[ConsumerSpec] = []
        for c in self.consumers:
            out.extend(c.for_partition(p) for p in range(self.partitions)) if c.partitioned else out.append(c)
        return out

    def consumer(self, name: str) -> ConsumerSpec:
        for c in self.expanded_consumers():
            if c.name == name:
                return c
        raise KeyError(name)


def load(path: Path | None = None) -> Topology:
    path = path or Path(os.environ.get("TOLK_TOPOLOGY", DEFAULT_PATH))
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    topo = msgspec.convert(raw, Topology)
    if topo.partitions < 1:
        raise ValueError("partitions must be >= 1")
    return topo


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
