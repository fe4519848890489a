"""The one NATS connection an actor owns, with typed publish helpers."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

import nats
from actors.runtime import backoff, permissions, settings
from actors.runtime.embedded import check_version
from schemas import AudioChunk, encode

log = logging.getLogger("tolk.bus")

PUBLISH_RETRY_S = 30.0
# What a JetStream publish raises while the stream has no leader (a cluster node died) or the client is
# reconnecting: worth retrying, unlike a rejected message.
TRANSIENT = (nats.errors.NoRespondersError, nats.errors.TimeoutError, nats.errors.ConnectionReconnectingError,
             nats.errors.StaleConnectionError, nats.js.errors.NoStreamResponseError,
             nats.js.errors.ServiceUnavailableError)


@dataclass
class NatsAuth:
    """How every Tolk process authenticates to NATS (env: TOLK_NATS_CREDS, TOLK_NATS_USER, TOLK_NATS_PASSWORD).

    Values are never logged. Empty: no authentication (the embedded dev server).
    """

    nats_creds: str = ""  # a .creds file (JWT + nkey seed): operator-mode servers
    nats_user: str = ""
    nats_password: str = field(default="", repr=False)

    def options(self) -> dict[str, Any]:
        if self.nats_creds:
            return {"user_credentials": self.nats_creds}
        if self.nats_user:
            # Replies and deliveries on the user's own inbox, which per-actor permissions (nats/permissions.toml)
            # let only that user read.
            prefix = permissions.inbox_prefix(self.nats_user)
            return {"user": self.nats_user, "password": self.nats_password,
                    **({"inbox_prefix": prefix} if prefix else {})}
        return {}


class Bus:
    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self.nc = nc
        self.js = js
        self._kv: dict[str, KeyValue] = {}

    @classmethod
    async def connect(cls, url: str, name: str, first_attempt_s: float | None = None,
                      auth: NatsAuth | None = None) -> Bus:
        """Connects and then reconnects forever. `first_attempt_s` bounds the first connection (tools
        report an unreachable server instead of waiting for it). `auth`: default from the environment."""
        if first_attempt_s is not None:
            try:
                return await asyncio.wait_for(cls.connect(url, name, auth=auth), first_attempt_s)
            except TimeoutError:
                raise ConnectionError(f"no NATS server answered at {url} within {first_attempt_s:.0f} s") from None

        async def on_error(exc: Exception) -> None:
            log.warning("nats error: %s", exc)

        async def on_disconnect() -> None:
            log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")

        nc = await nats.connect(
            **(auth or settings.load(NatsAuth)).options(),
            servers=[u.strip() for u in url.split(",")],
            name=name,
            max_reconnect_attempts=-1,
            # nats-py waits a constant between attempts; drawn per process, so a fleet that lost its server
            # together does not return in lockstep.
            reconnect_time_wait=backoff.spread(0.5),
            connect_timeout=5,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        v = nc.connected_server_version
        check_version(f"{v.major}.{v.minor}.{v.patch}", f"the NATS server at {url}")
        return cls(nc, nc.jetstream(timeout=10))

    async def kv(self, bucket: str) -> KeyValue:
        if bucket not in self._kv:
            self._kv[bucket] = await self.js.key_value(bucket)
        return self._kv[bucket]

    async def kv_keys(self, bucket: str) -> list[str]:
        """The bucket's keys, sorted; deleted and purged ones stay listed until their marker ages out (a get()
        tells). One STREAM.INFO request instead of nats-py's kv.keys(), whose watcher can report the end of the
        listing before it has read the entries already delivered (nats-io/nats.py#842): a bucket listed short or
        empty, e.g. a channel missing from GET /v1/channels. Fine for small buckets (channels, heartbeats): the
        server lists up to 100 000 subjects per reply."""
        prefix = f"$KV.{bucket}."
        info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
        return sorted(subject.removeprefix(prefix) for subject in (info.state.subjects or {}))

    async def publish(self, subject: str, msg: msgspec.Struct, msg_id: str | None = None,
                      retry_s: float = PUBLISH_RETRY_S) -> None:
        """JetStream publish, awaited: the caller acks its input only after this returns.

        `msg_id` becomes `Nats-Msg-Id`, so a redelivered input republishing the same output is
        deduplicated by the stream. That also makes retrying safe: while a cluster elects a new stream
        leader or the client reconnects, the publish is retried (with backoff) for up to `retry_s`.
        """
        headers: dict[str, Any] | None = {"Nats-Msg-Id": msg_id} if msg_id else None
        data = encode(msg)
        deadline = time.monotonic() + retry_s
        attempt = 0
        while True:
            try:
                await self.js.publish(subject, data, headers=headers)
                return
            except TRANSIENT as exc:
                delay = backoff.delay(attempt, 0.1, 2.0)
                if not msg_id or time.monotonic() + delay > deadline:
                    raise
                log.warning("publish to %s failed (%s); retrying in %.1f s", subject, exc.__class__.__name__, delay)
                await asyncio.sleep(delay)
                attempt += 1

    async def publish_audio(self, chunk: AudioChunk, partition: int) -> None:
        """Audio into the pipeline, from any source (microphone, file, channel): one subject and dedupe id scheme."""
        await self.publish(f"tolk.audio.{partition}.{chunk.session_id}", chunk,
                           msg_id=f"{chunk.session_id}:a{chunk.chunk_seq}")

    async def send(self, subject: str, msg: msgspec.Struct) -> None:
        """Core NATS publish (no persistence): for live fan-out to whoever listens now."""
        await self.nc.publish(subject, encode(msg))

    async def close(self) -> None:
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception as exc:  # closing anyway; a failed drain must not mask shutdown
                log.debug("drain failed: %s", exc)
                await self.nc.close()
