"""Reading back what JetStream stored: a session's results in TOLK_RESULTS (kept 1 h) for resuming clients
and transcript export, a channel's last finals in TOLK_CAPTIONS for late joiners."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from actors.runtime.bus import Bus
from schemas import (
    ClientResult,
    DecodeError,
    ResultKind,
    SpeakerTurns,
    Transcript,
    client_result,
    decode,
    with_speakers,
)

T = TypeVar("T", bound=msgspec.Struct)


async def read_all(bus: Bus, subject: str, stream: str, typ: type[T], batch: int = 256,
                   timeout: float = 5.0) -> list[T]:
    """Everything stored on `subject` when called, in stream order (an ephemeral consumer; nothing is acked).

    All of it or TimeoutError, never a silent part: the consumer says at creation how many messages match, and
    a fetch that times out under load is not mistaken for the end of the stream.
    """
    # Created unnamed: the server then makes only ephemeral consumers, which is all the edge's NATS user may
    # create (nats/permissions.toml), so it cannot alter the durable ones.
    info = await bus.js.add_consumer(stream, ConsumerConfig(
        filter_subject=subject, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=5.0))
    want = info.num_pending or 0
    out: list[T] = []
    if not want:
        return out
    psub = await bus.js.pull_subscribe_bind(info.name, stream=stream)
    deadline = time.monotonic() + timeout
    got = 0
    try:
        while got < want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"read {got} of the {want} messages on {subject} in {timeout:.0f} s")
            try:
                msgs = await psub.fetch(min(batch, want - got), timeout=left)
            except TimeoutError:
                continue  # the deadline check above reports it
            got += len(msgs)
            for m in msgs:
                with contextlib.suppress(DecodeError):
                    out.append(decode(m.data, typ))
            if msgs and msgs[-1].metadata.num_pending == 0:
                break  # fewer than counted: limits removed some meanwhile
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
    return out


class SharedReads(Generic[T]):
    """Concurrent reads of one subject, coalesced: a storm of 2,000 listeners re-subscribing to a restarted
    edge costs a few JetStream consumers per channel, not 2,000.

    A caller joins the next read that *starts* after it asked, never one already under way (that one may have
    missed what was stored since), so each gets everything stored before its request, as its own read would.
    """

    def __init__(self, read: Callable[[str], Awaitable[list[T]]]) -> None:
        self._read = read
        self._next: dict[str, asyncio.Future[list[T]]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    async def get(self, key: str) -> list[T]:
        fut = self._next.get(key)
        if fut is None:
            fut = self._next[key] = asyncio.get_running_loop().create_future()
            after = self._running.get(key)
            self._running[key] = asyncio.create_task(self._run(key, fut, after), name=f"replay.{key}")
        return list(await asyncio.shield(fut))

    async def _run(self, key: str, fut: asyncio.Future[list[T]], after: asyncio.Task[None] | None) -> None:
        try:
            if after is not None:
                await asyncio.wait([after])
            if self._next.get(key) is fut:  # from now on newcomers wait for the next read
                del self._next[key]
            fut.set_result(await self._read(key))
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: callers that gave up must not leave it "never retrieved"
        finally:
            if self._running.get(key) is asyncio.current_task():
                del self._running[key]


async def stored(bus: Bus, session_id: str) -> list[Transcript]:
    """Every transcript of the session, in stream order."""
    return await read_all(bus, f"tolk.result.*.{session_id}", "TOLK_RESULTS", Transcript)


async def speakers(bus: Bus, session_id: str) -> dict[int, SpeakerTurns]:
    """A diarized session's stored speaker labels (TOLK_SPEAKERS, kept 1 h): the newest revision per utterance."""
    out: dict[int, SpeakerTurns] = {}
    for t in await read_all(bus, f"tolk.speakers.*.{session_id}", "TOLK_SPEAKERS", SpeakerTurns):
        if t.utterance_id not in out or out[t.utterance_id].revision <= t.revision:
            out[t.utterance_id] = t
    return out


def labelled(results: list[ClientResult], turns: dict[int, SpeakerTurns]) -> list[ClientResult]:
    """Finals with their stored speaker labels, as fan-out sent them live (corrections applied)."""
    return [with_speakers(r, turns[r.utterance_id])
            if r.kind is ResultKind.FINAL and r.utterance_id in turns else r for r in results]


def finals(transcripts: list[Transcript]) -> list[Transcript]:
    """Non-empty finals in order, each once (a redelivered one is stored twice)."""
    by_index = {t.final_index: t for t in transcripts if t.kind is ResultKind.FINAL and t.text}
    return [by_index[k] for k in sorted(by_index)]


def missed(transcripts: list[Transcript], after_seq: int) -> list[ClientResult]:
    """The finals (and END) a client that last saw `after_seq` has not seen, in order.

    Fan-out releases finals strictly by `final_index`, so the client has seen every final up to the
    highest index among those with seq <= after_seq. From there only a gap-free run is replayed: a final
    still in the pipeline will come live, and anything after it must not overtake it.
    """
    ordered = {t.final_index: t for t in transcripts if t.kind in (ResultKind.FINAL, ResultKind.END)}
    seen = max((t.final_index for t in ordered.values() if t.seq <= after_seq), default=0)
    out: list[ClientResult] = []
    index = seen + 1
    while index in ordered:
        t = ordered[index]
        if t.kind is ResultKind.END:
            out.append(client_result(t, "", ""))
            break
        if t.text:
            out.append(client_result(t, t.text, t.text))
        index += 1
    return out


def after_cursor(history: list[ClientResult], after: tuple[str, int] | None) -> list[ClientResult]:
    """A channel's history (stream order) past a reconnecting listener's last final, so it gets what it missed
    and nothing twice. A cursor no longer in the history (older than what is kept) replays all of it, except
    its own run's finals at or before it."""
    if after is None:
        return history
    for i, r in enumerate(history):
        if (r.session_id, r.seq) == after:
            return history[i + 1:]
    return [r for r in history if r.session_id != after[0] or r.seq > after[1]]
