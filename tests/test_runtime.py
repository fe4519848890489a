"""Actor runtime against a real nats-server: topology apply, pull loop, garbage handling."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import RetentionPolicy

from actors.runtime import pools, topology
from actors.runtime.bus import Bus
from actors.runtime.consumer import Delivery, PullLoop
from schemas import ResultKind, Transcript, encode

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_topology_applies_idempotently(bus: Bus) -> None:
    topo = topology.load()
    again = await topology.apply(bus.js, topo)
    assert any("up to date" in line for line in again)
    for s in topo.streams:
        info = await bus.js.stream_info(s.name)
        assert info.config.subjects == s.subjects
    audio = await bus.js.stream_info("TOLK_AUDIO")
    assert audio.config.retention == RetentionPolicy.WORK_QUEUE.value
    names = {c.name for c in topo.expanded_consumers()}
    assert {f"segmenter-p{p}" for p in range(topo.partitions)} <= names
    assert {pools.durable(kind, pool) for kind in ("final", "partial") for pool in topo.pools} <= names
    for c in topo.expanded_consumers():
        info = await bus.js.consumer_info(c.stream, c.name)
        assert info.config.max_deliver == c.max_deliver
        assert info.config.ack_wait == c.ack_wait_s
        assert info.config.filter_subject == c.filter_subject
    for kv in topo.kv:
        assert (await bus.js.key_value(kv.bucket)).__class__.__name__ == "KeyValue"


async def test_changed_limits_are_updated(bus: Bus) -> None:
    topo = topology.load()
    import msgspec

    finals = pools.durable("final", topo.pools[0])
    changed = msgspec.structs.replace(
        topo, consumers=[msgspec.structs.replace(c, max_ack_pending=77) if c.name == "stt-final-{pool}" else c
                         for c in topo.consumers]
    )
    await topology.apply(bus.js, changed)
    assert (await bus.js.consumer_info("TOLK_SEGMENTS", finals)).config.max_ack_pending == 77
    await topology.apply(bus.js, topo)
    assert (await bus.js.consumer_info("TOLK_SEGMENTS", finals)).config.max_ack_pending == 256


async def test_pull_loop_terminates_garbage_and_keeps_serving(bus: Bus) -> None:
    got: list[Transcript] = []

    async def handler(items: list[Delivery[Transcript]]) -> None:
        for d in items:
            got.append(d.msg)
            await d.raw.ack()

    partition = 7
    subject = f"tolk.result.{partition}.garbage-test"
    good = Transcript(session_id="garbage-test", utterance_id=1, seq=1, final_index=1, kind=ResultKind.FINAL,
                      partition=partition, text="still alive")
    await bus.js.publish(subject, b"\x00\xffnot msgpack")
    await bus.js.publish(subject, encode(good))
    await bus.js.publish(subject, b"")
    loop = PullLoop(bus.js, "TOLK_RESULTS", f"fanout-p{partition}", Transcript, handler, fetch_timeout=0.5)
    task = asyncio.create_task(loop.run())
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    loop.stop()
    await asyncio.wait_for(task, 5)
    assert got == [good]
    info = await bus.js.consumer_info("TOLK_RESULTS", f"fanout-p{partition}")
    assert info.num_ack_pending == 0 and info.num_pending == 0  # garbage terminated, not redelivered


async def test_handler_failure_naks_for_redelivery(bus: Bus) -> None:
    attempts: list[int] = []

    async def flaky(items: list[Delivery[Transcript]]) -> None:
        attempts.append(items[0].raw.metadata.num_delivered)
        if len(attempts) == 1:
            raise RuntimeError("transient")
        for d in items:
            await d.raw.ack()

    partition = 6
    t = Transcript(session_id="flaky", utterance_id=1, seq=1, final_index=1, kind=ResultKind.FINAL, partition=partition)
    await bus.js.publish(f"tolk.result.{partition}.flaky", encode(t))
    loop = PullLoop(bus.js, "TOLK_RESULTS", f"fanout-p{partition}", Transcript, flaky, fetch_timeout=0.5)
    task = asyncio.create_task(loop.run())
    for _ in range(60):
        if len(attempts) >= 2:
            break
        await asyncio.sleep(0.1)
    loop.stop()
    await asyncio.wait_for(task, 5)
    assert attempts[:2] == [1, 2]


async def test_kv_keys_lists_a_bucket_whole_every_time(bus: Bus) -> None:
    """Bus.kv_keys reads the bucket's subjects in one request: never short or empty while the bucket holds keys
    (nats-py's kv.keys() watcher can end its listing early: nats-io/nats.py#842)."""
    kv = await bus.js.create_key_value(bucket="tolk_test_keys", history=1)
    assert await bus.kv_keys("tolk_test_keys") == []
    names = [f"k{i:03d}" for i in range(60)]
    await asyncio.gather(*(kv.put(n, b"x") for n in names))
    await kv.delete("k007")  # listed until its marker ages out; a get() says it is gone
    for _ in range(20):
        assert await bus.kv_keys("tolk_test_keys") == names
    await bus.js.delete_key_value("tolk_test_keys")
