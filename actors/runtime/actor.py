"""Actor lifecycle shared by every process: connect, start, heartbeat, run, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar

from nats.js.errors import KeyDeletedError, KeyNotFoundError

from actors.runtime import metrics
from actors.runtime import settings as settings_mod
from actors.runtime.bus import Bus
from actors.runtime.ops import OpsServer
from schemas import ActorHeartbeat, TranslationCatalog, decode, encode

log = logging.getLogger("tolk.actor")

HEARTBEAT_BUCKET = "tolk_actors"


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}".replace(".", "-")


@dataclass
class RuntimeSettings:
    """Settings every actor process has (env: TOLK_NATS_URL, TOLK_REPLICAS, ...)."""

    nats_url: str = "nats://127.0.0.1:4222"
    log_level: str = "INFO"
    # Partitioned actors (segmenter, fan-out) own partitions p with p % replicas == replica_index.
    # -1: the ordinal at the end of the host name (a StatefulSet pod `tolk-segmenter-2` is replica 2).
    replicas: int = 1
    replica_index: int = 0
    instance: str = field(default_factory=_default_instance)
    heartbeat_s: float = 5.0
    drain_timeout_s: float = 20.0
    # /metrics, /healthz, /readyz (port 0: any free port, announced in the heartbeat; -1: none).
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 0

    def __post_init__(self) -> None:
        if self.replica_index == -1:
            self.replica_index = ordinal_from_hostname(socket.gethostname())


def ordinal_from_hostname(hostname: str) -> int:
    """`tolk-fanout-3` → 3: a StatefulSet pod's stable index."""
    tail = hostname.split(".", 1)[0].rsplit("-", 1)[-1]
    if not tail.isdigit():
        raise ValueError(f"TOLK_REPLICA_INDEX=-1 needs a host name ending in -<ordinal>, not {hostname!r}")
    return int(tail)


class Actor(ABC):
    """One concern, one process. Subclasses must not import other actors."""

    name: ClassVar[str]
    # The edge serves /metrics and the probes on its own HTTP port; every other actor gets an OpsServer.
    serves_ops: ClassVar[bool] = False

    def __init__(self, bus: Bus, runtime: RuntimeSettings) -> None:
        self.bus = bus
        self.runtime = runtime
        self.ready = False
        # Set when what `info()` / `translation()` announce changed: the next heartbeat goes out now, not at its tick.
        self.announce_now = asyncio.Event()

    @abstractmethod
    async def start(self) -> None:
        """Load models and bind consumers; `ready` is set by the runtime once this returns."""

    @abstractmethod
    async def run(self) -> None:
        """Serve until `drain()` is called, then return once in-flight work is settled."""

    @abstractmethod
    async def drain(self) -> None:
        """Stop taking new work; `run()` finishes what it holds."""

    def ops_port(self) -> int:
        """Where an actor with `serves_ops` serves /metrics (announced in its heartbeat)."""
        return 0

    def info(self) -> dict[str, str]:
        """What this instance serves, announced in its heartbeat (stt: its pool, model and languages)."""
        return {}

    def translation(self) -> TranslationCatalog | None:
        """A translator's engines and pairs, announced in its heartbeat (the edge refuses pairs none serves)."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release resources after `run()` returned (executors, files)."""


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s",
    )


async def _heartbeat(actor: Actor, started: float, metrics_port: int) -> None:
    kv = await actor.bus.kv(HEARTBEAT_BUCKET)
    key = f"{actor.name}.{actor.runtime.instance}"
    while True:
        beat = ActorHeartbeat(
            actor=actor.name,
            instance=actor.runtime.instance,
            pid=os.getpid(),
            started_at=started,
            ready=actor.ready,
            metrics_port=metrics_port,
            info=actor.info(),
            translation=actor.translation(),
        )
        try:
            await kv.put(key, encode(beat))
        except Exception as exc:  # NATS briefly away: keep beating, expiry reports us if it lasts
            log.warning("heartbeat failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(actor.announce_now.wait(), actor.runtime.heartbeat_s)
        actor.announce_now.clear()


async def heartbeats(bus: Bus) -> list[ActorHeartbeat]:
    """Every live actor process, from its heartbeat in KV (expired ones are gone by TTL)."""
    kv = await bus.kv(HEARTBEAT_BUCKET)
    try:
        keys = await bus.kv_keys(HEARTBEAT_BUCKET)
    except Exception as exc:  # NATS away: nothing can be shown alive
        log.debug("heartbeats unlisted: %s", exc)
        return []
    out: list[ActorHeartbeat] = []
    for key in keys:
        for attempt in range(2):  # a live actor missing from the list reads as down: retry a slow read once
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):  # expired or stopped (its key deleted) since the listing
                break
            except Exception as exc:
                log.debug("heartbeat %s unread (attempt %d): %s", key, attempt + 1, exc)
                continue
            try:
                if entry.value:
                    out.append(decode(entry.value, ActorHeartbeat))
            except Exception:  # another schema version's heartbeat
                pass
            break
    return out


async def serve(factory: Callable[[Bus, RuntimeSettings], Awaitable[Actor]]) -> None:
    runtime = settings_mod.load(RuntimeSettings)
    configure_logging(runtime.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    started = time.time()
    bus = await Bus.connect(runtime.nats_url, name=f"tolk-{runtime.instance}")
    actor = await factory(bus, runtime)
    metrics.set_actor(actor.name)
    ops = OpsServer(actor.name, lambda: _readiness(actor))
    if runtime.metrics_port >= 0 and not actor.serves_ops:  # up before the models load: liveness passes meanwhile
        await ops.start(runtime.metrics_host, runtime.metrics_port)
    log.info("%s starting (instance %s)", actor.name, runtime.instance)
    try:
        await actor.start()
    except settings_mod.ConfigError as exc:
        log.error("%s cannot start: %s", actor.name, exc)
        await ops.close()
        await actor.close()
        await bus.close()
        raise SystemExit(2) from None
    actor.ready = True
    metrics.ACTOR_READY.labels(actor.name).set(1)
    port = actor.ops_port() if actor.serves_ops else ops.port
    beat = asyncio.create_task(_heartbeat(actor, started, port), name="heartbeat")
    main = asyncio.create_task(actor.run(), name=f"{actor.name}.run")
    stopper = asyncio.create_task(stop.wait(), name="stop-signal")
    log.info("%s ready", actor.name)
    try:
        await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if main.done():
            if main.exception() is not None:
                log.error("%s crashed", actor.name, exc_info=main.exception())
            main.result()  # exit non-zero: the supervisor restarts us
        else:
            log.info("%s draining", actor.name)
            await actor.drain()
            try:
                await asyncio.wait_for(asyncio.shield(main), runtime.drain_timeout_s)
            except TimeoutError:
                log.warning("%s: drain timed out; unfinished work will be redelivered", actor.name)
    finally:
        for task in (main, stopper, beat):
            task.cancel()
        for task in (main, stopper, beat):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            kv = await bus.kv(HEARTBEAT_BUCKET)
            await kv.delete(f"{actor.name}.{runtime.instance}")
        metrics.ACTOR_READY.labels(actor.name).set(0)
        await ops.close()
        await actor.close()
        await bus.close()
        log.info("%s stopped", actor.name)


def _readiness(actor: Actor) -> tuple[bool, dict[str, bool]]:
    checks = {"nats": actor.bus.nc.is_connected, "started": actor.ready}
    return all(checks.values()), checks
