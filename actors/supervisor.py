"""`tolk up`: one machine, every actor its own child process, supervised.

Starts the embedded nats-server (unless --nats-url) with one user per actor (nats/permissions.toml, fresh
random passwords each start, handed to each child in its environment only), applies the topology, starts the pipeline
actors (an STT child per STT pool, `stt-<pool>`, each with its own TOLK_STT_POOL), waits until they report ready,
then the edge. Crashed actors are restarted with a jittered backoff that a stop cuts short.
SIGINT/SIGTERM drain: the edge stops first (no new audio), then the pipeline, then NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from actors.runtime import backoff, permissions, pools, topology
from actors.runtime.actor import heartbeats
from actors.runtime.bus import Bus, NatsAuth
from actors.runtime.embedded import EmbeddedNats, die_with_parent

log = logging.getLogger("tolk.up")

PIPELINE = ("segmenter", "stt", "translator", "diarizer", "fanout", "ingest", "exporter")


@dataclass
class Child:
    name: str  # in the log: the actor, or `stt-<pool>`
    env: dict[str, str] = field(repr=False)  # holds its NATS password
    actor: str = ""  # what `tolk actor` runs (default: name); the pool travels in TOLK_STT_POOL, not argv
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started: float = 0.0
    restart_at: float | None = None  # crashed: when the backoff ends

    async def spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "actors.cli", "actor", self.actor or self.name, env=self.env,
            preexec_fn=die_with_parent,
        )
        self.started = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    async def stop(self, timeout: float) -> None:
        if not self.proc or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            log.warning("%s did not stop in %.0fs; killing", self.name, timeout)
            self.proc.kill()
            await self.proc.wait()


@dataclass
class UpOptions:
    nats_url: str | None
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    nats_port: int = -1
    nats_replicas: int = 1  # JetStream replicas of every stream and bucket (3 on a 3-node cluster)
    extra_env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 300.0
    nats_auth: bool = True  # the embedded server: per-actor users (an external NATS's auth is the operator's)
    nats_sync: str = "always"  # the embedded server's JetStream sync_interval (docs/operations.md#durability)


class Supervisor:
    def __init__(self, opts: UpOptions) -> None:
        self.opts = opts
        # Parsed once here (a malformed TOLK_STT_POOLS stops `tolk up` before anything starts), then handed to
        # every child in its canonical form, so all of them route alike.
        self.pools = pools.load({**os.environ, **opts.extra_env})
        self.topo = topology.load(pools=self.pools)
        self.nats: EmbeddedNats | None = None
        self.children: list[Child] = []
        self._stop = asyncio.Event()
        self._passwords: dict[str, str] = {}  # per-actor NATS users of the embedded server; empty: none

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            url = await self._nats()
            bus = await Bus.connect(url, name="tolk-up", auth=self._auth(permissions.ADMIN))
            try:
                await topology.apply(bus.js, self.topo, replicas=self.opts.nats_replicas)
                # Many actors on one host: each takes any free metrics port (announced in its heartbeat).
                env = {**os.environ, **self.opts.extra_env, "TOLK_NATS_URL": url, pools.ENV_POOLS: self.pools.spec,
                       "TOLK_METRICS_HOST": self.opts.host, "TOLK_METRICS_PORT": "0"}
                self.children = [child for name in PIPELINE for child in self._children(env, name)]
                for child in self.children:
                    await child.spawn()
                if not await self._wait_ready(bus):
                    return 1
                edge = Child("edge", {**self._env(env, "edge"), "TOLK_HOST": self.opts.host,
                                      "TOLK_PORT": str(self.opts.port)})
                await edge.spawn()
                self.children.insert(0, edge)
                print(f"Tolk is up: ws://{self.opts.host}:{self.opts.port}/v1/listen  (NATS {url})", flush=True)
            finally:
                await bus.close()
            await self._watch()
            return 0
        finally:
            await self.shutdown()

    async def _nats(self) -> str:
        if self.opts.nats_url:
            return self.opts.nats_url
        authorization = ""
        if self.opts.nats_auth:
            by_user = permissions.grants(self.topo.partitions)
            self._passwords = permissions.new_passwords(by_user)
            authorization = permissions.authorization(self._passwords, by_user)
        self.nats = EmbeddedNats(self.opts.data_dir, port=self.opts.nats_port, authorization=authorization,
                                 sync=self.opts.nats_sync)
        url = await self.nats.start()
        if self._passwords:  # for `tolk status` / `tolk tap` on this machine (0600, removed at stop)
            permissions.write_users(self.opts.data_dir / "run", self._passwords)
        return url

    def _auth(self, user: str) -> NatsAuth | None:
        return NatsAuth(nats_user=user, nats_password=self._passwords[user]) if self._passwords else None

    def _env(self, base: dict[str, str], actor: str) -> dict[str, str]:
        """A child's environment: with the embedded server's users, its own user and nothing else."""
        if not self._passwords:
            return dict(base)
        env = {k: v for k, v in base.items() if k != "TOLK_NATS_CREDS"}
        return {**env, "TOLK_NATS_USER": actor, "TOLK_NATS_PASSWORD": self._passwords[actor]}

    def _children(self, env: dict[str, str], actor: str) -> list[Child]:
        """One child per actor; STT one per pool, each serving its own (the models differ)."""
        if actor != "stt":
            return [Child(actor, self._env(env, actor))]
        return [Child(f"stt-{p.name}", {**self._env(env, actor), pools.ENV_POOL: p.name}, actor=actor)
                for p in self.pools.pools]

    async def _wait_ready(self, bus: Bus) -> bool:
        """Every child ready, each STT pool included (an English-only ready STT is no help to German)."""
        deadline = time.monotonic() + self.opts.ready_timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            pids = {c.proc.pid for c in self.children if c.proc}
            ready = {beat.pid for beat in await heartbeats(bus) if beat.ready and beat.pid in pids}
            if ready >= pids:
                return True
            dead = [c.name for c in self.children if c.proc and c.proc.returncode is not None]
            if dead:
                log.error("actor(s) %s exited during start-up; see their log above", ", ".join(dead))
                return False
            await asyncio.sleep(0.2)
        if not self._stop.is_set():
            log.error("actors not ready after %.0fs", self.opts.ready_timeout_s)
        return False

    async def _watch(self) -> None:
        """Restart crashed children after a jittered backoff that grows with quick repeat crashes.

        A backoff is a due time, not a sleep: one child's wait holds up neither another's restart nor a stop.
        """
        while not self._stop.is_set():
            now = time.monotonic()
            for child in self.children:
                if not child.proc or child.proc.returncode is None:
                    continue
                if child.restart_at is None:
                    quick = now - child.started < 30
                    child.restarts = child.restarts + 1 if quick else 0
                    delay = backoff.delay(child.restarts, 0.5, 30.0)
                    child.restart_at = now + delay
                    log.error("%s exited with %s; restarting in %.1fs", child.name, child.proc.returncode, delay)
                elif now >= child.restart_at:
                    child.restart_at = None
                    await child.spawn()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.2)

    async def shutdown(self) -> None:
        # Edge first (stops new audio), then the pipeline drains, then NATS.
        for child in self.children:
            if child.name == "edge":
                await child.stop(timeout=15)
        await asyncio.gather(*(c.stop(timeout=30) for c in self.children if c.name != "edge"))
        if self.nats:
            await self.nats.stop()
            (self.opts.data_dir / "run" / permissions.USERS_FILE).unlink(missing_ok=True)
        log.info("all stopped")
