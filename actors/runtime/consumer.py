"""Pull-consumer loop: fetch, decode, hand a batch to the actor, ack after its outputs are out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from actors.runtime import backoff, metrics
from schemas import DecodeError, decode

T = TypeVar("T", bound=msgspec.Struct)

log = logging.getLogger("tolk.consumer")


class Delivery(Generic[T]):
    """A decoded message plus the means to settle it."""

    __slots__ = ("msg", "raw")

    def __init__(self, msg: T, raw: Msg) -> None:
        self.msg = msg
        self.raw = raw


Handler = Callable[[list[Delivery[T]]], Awaitable[None]]


class PullLoop(Generic[T]):
    """Runs until `stop()`: then it fetches nothing new and returns after the batch in hand.

    The handler owns acking (it may ack some and nak others); anything it leaves unsettled
    because it raised is nak'ed with a delay so a poison batch does not spin.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        typ: type[T],
        handler: Handler[T],
        batch: int = 32,
        fetch_timeout: float = 1.0,
    ) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.typ = typ
        self.handler = handler
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def fetch(self, sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Delivery[T]]:
        try:
            raws = await sub.fetch(batch, timeout=timeout)
        except TimeoutError:  # nats-py raises both its own TimeoutError and asyncio's: both mean "none"
            return []
        out: list[Delivery[T]] = []
        for raw in raws:
            metrics.count_delivery(self.durable, raw.metadata.num_delivered)
            try:
                out.append(Delivery(decode(raw.data, self.typ), raw))
            except DecodeError as exc:
                log.error("%s: terminating undecodable message on %s: %s", self.durable, raw.subject, exc)
                metrics.count_error("undecodable_message")
                await raw.term()
        return out

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        return await self.js.pull_subscribe_bind(self.durable, stream=self.stream)

    async def run(self) -> None:
        sub = await self.subscribe()
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    items = await self.fetch(sub, self.batch, self.fetch_timeout)
                except nats.errors.Error as exc:  # reconnecting, JetStream failing over: wait, retry
                    log.warning("%s: fetch failed (%s); retrying", self.durable, exc)
                    await asyncio.sleep(backoff.delay(failures, 0.5, 5.0))
                    failures += 1
                    continue
                failures = 0
                if items:
                    await self.settle(items)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # connection may already be closed at shutdown
                pass

    async def settle(self, items: list[Delivery[T]]) -> None:
        try:
            await self.handler(items)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: handler failed; nak'ing %d message(s)", self.durable, len(items))
            metrics.count_error("handler_failed")
            for d in items:
                try:
                    await d.raw.nak(delay=1.0)
                except Exception:  # already settled by the handler
                    pass
