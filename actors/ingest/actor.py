"""Ingest actor: one pipeline per broadcast channel, while anyone listens.

It follows KV `tolk_listeners`: when a channel's stream `ch=<name>` gains its first listener, ingest
takes the channel's lease in KV `tolk_ingest` (a create: only one replica wins) and runs the channel as a
session `ch=<name>=<run>` of stream `ch=<name>`: PCM into `tolk.audio.*` exactly like a microphone, MP3
to `tolk.channel.<name>.audio` for listeners to play. A source that drops is reopened with backoff and
the stream clock carries on. `ingest_grace_s` after the last listener leaves, the run ends (END flushes
the last finals) and the lease is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from actors.runtime import backoff, channels, listeners, settings, topology
from actors.runtime.actor import Actor, RuntimeSettings
from actors.runtime.bus import Bus
from actors.runtime.media import SourceChunk, SourceEnded, read_source
from actors.runtime.partition import partition_for
from schemas import AudioChunk, ChannelRecord, Encoding, IngestLease, encode

log = logging.getLogger("tolk.ingest")

RUNNING = Gauge("tolk_ingest_channels_running", "Channels this ingest replica is pulling now.")
AUDIO_SECONDS = Counter("tolk_ingest_audio_seconds", "Seconds of channel audio published, by channel.", ["channel"])
RECONNECTS = Counter("tolk_ingest_reconnects", "Times a channel's source was reopened after a drop or failure.",
                     ["channel"])


@dataclass
class IngestSettings:
    """Env: TOLK_CHANNELS_FILE, TOLK_CHANNELS, TOLK_INGEST_GRACE_S, ... (docs/configuration.md#configuration)."""

    channels_file: str = ""  # TOML/JSON channel list (see actors/runtime/channels.py)
    channels: str = ""  # or the same as JSON in the environment
    ingest_grace_s: float = 10.0  # keep a channel running this long after its last listener left
    ingest_backoff_max_s: float = 30.0  # reconnect delays double from 1-2 s (jittered) up to this
    ingest_open_timeout_s: float = 10.0
    ingest_max_channels: int = 32  # pipelines this replica runs at once
    ingest_audio_frame_ms: int = 500  # relayed audio is sent to listeners in frames this long (fewer messages)


def audio_frame(t: float, mp3: bytes) -> bytes:
    """Relayed audio on NATS and to WebSocket listeners: 8-byte little-endian float64 stream time + MP3."""
    return struct.pack("<d", t) + mp3


class Pipeline:
    """One run of one channel: the source thread feeds a bounded queue; this side publishes."""

    def __init__(self, actor: IngestActor, channel: ChannelRecord) -> None:
        self.actor = actor
        self.channel = channel
        self.session_id = channels.new_session_id(channel.name)
        self.stream = channels.stream_id(channel.name)
        self.partition = partition_for(self.session_id, actor.topo.partitions)
        self.queue: asyncio.Queue[SourceChunk] = asyncio.Queue(maxsize=50)
        self.stop = threading.Event()
        self.chunk_seq = 0
        self.t = 0.0
        self.reconnects = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        publisher = asyncio.create_task(self._publish_loop(), name=f"ingest.pub.{self.channel.name}")
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while not self.stop.is_set():
                began_at = self.t
                try:
                    self.t = await loop.run_in_executor(self.actor.threads, self._read, loop)
                except SourceEnded as exc:
                    log.warning("%s: %s", self.channel.name, exc)
                except Exception as exc:  # network, codec, a server answering 404: retried the same way
                    log.warning("%s: source failed: %s", self.channel.name, exc)
                if self.stop.is_set():
                    break
                if self.t - began_at > 10:
                    attempt = 0  # it had been flowing: this is a fresh drop, not a dead source
                self.reconnects += 1
                RECONNECTS.labels(self.channel.name).inc()
                wait = backoff.delay(attempt, 2.0, self.actor.cfg.ingest_backoff_max_s)
                log.info("%s: reconnecting in %.1f s (reconnect %d)", self.channel.name, wait, self.reconnects)
                await self._sleep(wait)
                attempt += 1
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), 10)  # publish what was read before END
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
            with contextlib.suppress(Exception):
                await self._send(b"", end=True)

    async def _sleep(self, seconds: float) -> None:
        """A backoff that a stop cuts short."""
        for _ in range(max(1, int(seconds / 0.2))):  # self.stop is a threading.Event: poll it
            if self.stop.is_set():
                return
            await asyncio.sleep(0.2)

    def _read(self, loop: asyncio.AbstractEventLoop) -> float:
        def emit(chunk: SourceChunk) -> None:
            self.t = chunk.t + len(chunk.pcm) / 32000
            fut = asyncio.run_coroutine_threadsafe(self.queue.put(chunk), loop)
            while not self.stop.is_set():  # backpressure: the thread waits for the publisher
                try:
                    fut.result(timeout=0.5)
                    return
                except TimeoutError:
                    continue
            fut.cancel()

        return read_source(self.channel.url, emit, self.stop, self.t,
                           open_timeout_s=self.actor.cfg.ingest_open_timeout_s)

    async def _publish_loop(self) -> None:
        subject = channels.audio_subject(self.channel.name)
        frame_s = self.actor.cfg.ingest_audio_frame_ms / 1000
        mp3, mp3_t = bytearray(), 0.0
        while True:
            chunk = await self.queue.get()
            try:
                if chunk.mp3:
                    if not mp3:
                        mp3_t = chunk.t
                    mp3 += chunk.mp3
                if mp3 and chunk.t + 0.1 - mp3_t >= frame_s:
                    await self.actor.bus.nc.publish(subject, audio_frame(mp3_t, bytes(mp3)))
                    mp3.clear()
                await self._send(chunk.pcm, end=False)
            except Exception as exc:  # NATS reconnecting: this chunk is lost, the stream goes on
                log.warning("%s: chunk at %.1f s not published: %s", self.channel.name, chunk.t, exc)
            finally:
                self.queue.task_done()

    async def _send(self, pcm: bytes, end: bool) -> None:
        self.chunk_seq += 1
        msg = AudioChunk(
            session_id=self.session_id, chunk_seq=self.chunk_seq, sample_rate=16000, encoding=Encoding.PCM_S16LE,
            language=self.channel.language, data=pcm, received_at=time.time(), end=end, stream_id=self.stream,
        )
        await self.actor.bus.publish_audio(msg, self.partition)
        AUDIO_SECONDS.labels(self.channel.name).inc(len(pcm) / 32000)


class IngestActor(Actor):
    name = "ingest"

    def __init__(self, bus: Bus, runtime: RuntimeSettings, cfg: IngestSettings, topo: topology.Topology) -> None:
        super().__init__(bus, runtime)
        self.cfg = cfg
        self.topo = topo
        self.channels: dict[str, ChannelRecord] = {}
        self.view = listeners.ListenerView()
        self.running: dict[str, Pipeline] = {}
        self.last_listener: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._leases: KeyValue | None = None
        # One blocking reader thread per running channel (FFmpeg I/O); never the loop's small default pool.
        self.threads = ThreadPoolExecutor(max_workers=cfg.ingest_max_channels, thread_name_prefix="ingest")

    async def start(self) -> None:
        configured = channels.load(self.cfg.channels_file, self.cfg.channels)
        self.channels = {c.name: c for c in configured}
        kv = await self.bus.kv(channels.BUCKET)
        for c in configured:
            await kv.put(c.name, encode(c))
        with contextlib.suppress(Exception):  # channels removed from the config disappear from listings
            for key in await self.bus.kv_keys(channels.BUCKET):
                if key not in self.channels:
                    await kv.delete(key)
        self._leases = await self.bus.kv(channels.LEASES)
        self._watch = asyncio.create_task(self.view.watch(await self.bus.kv(listeners.BUCKET)), name="ingest.watch")
        await asyncio.wait_for(self.view.synced.wait(), timeout=10)
        log.info("ingest ready: channels %s", sorted(self.channels) or "none configured")

    async def run(self) -> None:
        refreshed = 0.0
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                await self._reconcile(now)
                if now - refreshed >= 5:
                    await self._refresh_leases()
                    refreshed = now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 0.25)
        finally:
            await asyncio.gather(*(self._stop(name) for name in list(self.running)), return_exceptions=True)
            if self._watch is not None:
                self._watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watch
            self.threads.shutdown(wait=False, cancel_futures=True)

    async def drain(self) -> None:
        self._stopping.set()

    async def _reconcile(self, now: float) -> None:
        for name, channel in self.channels.items():
            if self.view.listeners(channels.stream_id(name)):
                self.last_listener[name] = now
                if name not in self.running and len(self.running) < self.cfg.ingest_max_channels:
                    await self._start(channel)
            elif name in self.running and now - self.last_listener.get(name, now) >= self.cfg.ingest_grace_s:
                log.info("%s: no listener for %.0f s; stopping", name, self.cfg.ingest_grace_s)
                await self._stop(name)
        for name, p in list(self.running.items()):
            if p.task is not None and p.task.done():
                self.running.pop(name, None)
                RUNNING.set(len(self.running))
                await self._release(name)

    async def _start(self, channel: ChannelRecord) -> None:
        assert self._leases is not None
        pipeline = Pipeline(self, channel)
        lease = IngestLease(channel=channel.name, instance=self.runtime.instance, session_id=pipeline.session_id,
                            started_at=time.time())
        try:
            await self._leases.create(channel.name, encode(lease))
        except KeyWrongLastSequenceError:
            return  # another replica runs it
        log.info("%s: first listener; starting %s from %s", channel.name, pipeline.session_id, channel.url)
        self.running[channel.name] = pipeline
        RUNNING.set(len(self.running))
        pipeline.task = asyncio.create_task(pipeline.run(), name=f"ingest.{channel.name}")

    async def _stop(self, name: str) -> None:
        pipeline = self.running.pop(name, None)
        RUNNING.set(len(self.running))
        if pipeline is None:
            return
        pipeline.stop.set()
        if pipeline.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pipeline.task, 15)
        await self._release(name)
        log.info("%s: stopped %s", name, pipeline.session_id)

    async def _release(self, name: str) -> None:
        if self._leases is not None:
            with contextlib.suppress(Exception):
                await self._leases.delete(name)

    async def _refresh_leases(self) -> None:
        assert self._leases is not None
        for name, p in self.running.items():
            lease = IngestLease(channel=name, instance=self.runtime.instance, session_id=p.session_id,
                                started_at=time.time())
            try:
                await self._leases.put(name, encode(lease))
            except Exception as exc:
                log.warning("%s: lease not refreshed: %s", name, exc)


async def create(bus: Bus, runtime: RuntimeSettings) -> Actor:
    return IngestActor(bus, runtime, settings.load(IngestSettings), topology.load())
