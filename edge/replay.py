"""A session's results as stored in TOLK_RESULTS (kept 1 h): for resuming clients and transcript export."""

from __future__ import annotations

import contextlib

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from actors.runtime.bus import Bus
from schemas import ClientResult, DecodeError, ResultKind, Transcript, client_result, decode


async def stored(bus: Bus, session_id: str) -> list[Transcript]:
    """Every transcript of the session in stream order (an ephemeral consumer; nothing is acked)."""
    psub = await bus.js.pull_subscribe(
        f"tolk.result.*.{session_id}", stream="TOLK_RESULTS",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30.0),
    )
    out: list[Transcript] = []
    try:
        while True:
            try:
                msgs = await psub.fetch(256, timeout=0.5)
            except TimeoutError:
                break
            for m in msgs:
                with contextlib.suppress(DecodeError):
                    out.append(decode(m.data, Transcript))
            if not msgs or msgs[-1].metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
    return out


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
