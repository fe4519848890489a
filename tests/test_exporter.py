"""The exporter against a real nats-server: consumer lag, stream sizes, actor instances and dead letters."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from prometheus_client import REGISTRY

from actors.exporter.actor import ExporterActor, ExporterSettings
from actors.runtime import settings
from actors.runtime.actor import RuntimeSettings
from actors.runtime.bus import Bus
from schemas import ResultKind, Transcript, encode

pytestmark = pytest.mark.asyncio(loop_scope="session")


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_lag_sizes_instances_and_dead_letters(bus: Bus) -> None:
    exporter = ExporterActor(bus, settings.load(RuntimeSettings, env={}), ExporterSettings())
    await exporter.start()
    lag0 = sample("tolk_jetstream_consumer_pending_messages", stream="TOLK_TRANSCRIPTS", consumer="translator")
    for seq in range(5):  # no translator runs in this test: these wait on its durable consumer
        t = Transcript(session_id="exp", utterance_id=seq, seq=seq + 1, final_index=seq, kind=ResultKind.FINAL,
                       partition=0, text="x")
        await bus.js.publish("tolk.transcript.0.exp", encode(t))
    await exporter.scrape()
    assert sample("tolk_jetstream_consumer_pending_messages", stream="TOLK_TRANSCRIPTS",
                  consumer="translator") == lag0 + 5
    assert sample("tolk_jetstream_stream_messages", stream="TOLK_TRANSCRIPTS") >= 5
    assert sample("tolk_jetstream_stream_bytes", stream="TOLK_TRANSCRIPTS") > 0
    # Zero rows, not gaps, for actors with no heartbeat: an alert on `== 0` can fire.
    assert REGISTRY.get_sample_value("tolk_actor_instances", {"actor": "stt", "ready": "true"}) == 0
    assert sample("tolk_exporter_last_scrape_timestamp_seconds") > 0

    # A message nobody can process: nak'ed until max_deliver, then the server's advisory counts it.
    await bus.js.add_stream(StreamConfig(name="TOLK_DLQTEST", subjects=["dlqtest.>"]))
    await bus.js.add_consumer("TOLK_DLQTEST", ConsumerConfig(durable_name="poison", ack_policy=AckPolicy.EXPLICIT,
                                                             max_deliver=2, ack_wait=1.0))
    await bus.js.publish("dlqtest.x", b"poison")
    sub = await bus.js.pull_subscribe_bind("poison", stream="TOLK_DLQTEST")
    for _ in range(2):
        (msg,) = await sub.fetch(1, timeout=5)
        await msg.nak()
    with pytest.raises(TimeoutError):  # a pull after the last nak is when the server gives up on it
        await sub.fetch(1, timeout=1)
    for _ in range(50):
        if sample("tolk_dead_letters_total", stream="TOLK_DLQTEST", consumer="poison") == 1:
            break
        await asyncio.sleep(0.1)
    assert sample("tolk_dead_letters_total", stream="TOLK_DLQTEST", consumer="poison") == 1
    for _ in range(50):
        try:
            copy = await bus.js.get_last_msg("TOLK_DEADLETTER", "tolk.deadletter.TOLK_DLQTEST.poison")
            break
        except Exception:
            await asyncio.sleep(0.1)
    assert copy.data == b"poison"
    assert copy.headers and copy.headers["Tolk-Subject"] == "dlqtest.x" and copy.headers["Tolk-Deliveries"] == "2"
    await exporter.scrape()
    assert sample("tolk_jetstream_consumer_redelivered_messages", stream="TOLK_DLQTEST", consumer="poison") >= 0
    await bus.js.delete_stream("TOLK_DLQTEST")
    await exporter.scrape()  # a consumer that is gone stops reporting
    assert REGISTRY.get_sample_value("tolk_jetstream_consumer_pending_messages",
                                     {"stream": "TOLK_DLQTEST", "consumer": "poison"}) is None
    await exporter.drain()
