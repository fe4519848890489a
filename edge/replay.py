"""Reading back what JetStream stored: a session's results in TOLK_RESULTS (kept 1 h) for resuming clients
and transcript export, a channel's last finals in TOLK_CAPTIONS for late joiners."""

from __future__ import annotations

import contextlib
from typing import TypeVar

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from actors.runtime.bus import Bus
from schemas import ClientResult, DecodeError, ResultKind, Transcript, client_result, decode

T = TypeVar("T", bound=msgspec.Struct)


async def read_all(bus: Bus, subject: str, stream: str, typ: type[T], batch: int = 256,
                   timeout: float = 0.5) -> list[T]:
    """Everything stored on `subject`, in stream order (an ephemeral consumer; nothing is acked)."""
    # Created unnamed: the server then makes only ephemeral consumers, which is all the edge's NATS user may
    # create (nats/permissions.toml), so it cannot alter the durable ones.
    info = await bus.js.add_consumer(stream, ConsumerConfig(
        filter_subject=subject, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30.0))
    psub = await bus.js.pull_subscribe_bind(info.name, stream=stream)
    out: list[T] = []
    try:
        while True:
            try:
                msgs = await psub.fetch(batch, timeout=timeout)
            except TimeoutError:
                break
            for m in msgs:
                with contextlib.suppress(DecodeError):
                    out.append(decode(m.data, typ))
            if not msgs or msgs[-1].metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
    return out


async def stored(bus: Bus, session_id: str) -> list[Transcript]:
    """Every transcript of the session, in stream order."""
    return await read_all(bus, f"tolk.result.*.{session_id}", "TOLK_RESULTS", Transcript)


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
