"""STT pools routed by language (TOLK_STT_POOLS): the setting's rules, the per-pool topology and its
migrations on a real nats-server, and a real `tolk up` with the default pools: English on tiny.en, German on
the multilingual base, at the same time, and a session that switches language mid-stream."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio

from actors.runtime import permissions, pools, topology
from actors.runtime.bus import Bus
from actors.runtime.embedded import EmbeddedNats
from actors.runtime.settings import SettingsError
from loadtest.client import stream_pcm
from loadtest.mic import metric_sum, stt_scrapes
from loadtest.speech import Clip, clips
from loadtest.wer import corpus_wer
from schemas import Segment, SegmentKind, encode
from tests.conftest import TOLK, Running, edge_server, start_tolk, stop_tolk

on_loop = pytest.mark.asyncio(loop_scope="session")

# ------------------------------------------------------------------------------------------- the setting


def test_default_pools_route_english_to_tiny_en_and_everything_else_to_base() -> None:
    default = pools.load({})
    assert default.spec == pools.DEFAULT == "en=tiny.en:en;multi=base:*"
    assert [(p.name, p.model, p.languages) for p in default.pools] == [("en", "tiny.en", ("en",)),
                                                                       ("multi", "base", ("*",))]
    assert default.route("en").name == "en"
    for language in ("de", "pt", "ja", "auto"):
        assert default.route(language).name == "multi", language


def test_tolk_model_alone_makes_one_pool_and_the_pools_setting_wins() -> None:
    single = pools.load({"TOLK_MODEL": "base"})
    assert single.spec == "default=base:*" and single.route("en").model == "base"
    assert single.serving("").name == "default"  # one pool: TOLK_STT_POOL may be left out
    assert pools.load({"TOLK_MODEL": " ", "TOLK_STT_POOLS": ""}).spec == pools.DEFAULT  # empty is unset
    both = pools.load({"TOLK_MODEL": "base", "TOLK_STT_POOLS": "a=tiny.en:en; b=small:*"})
    assert both.names == ("a", "b") and both.route("fr").model == "small"


def test_spec_syntax_exact_match_first_then_the_catch_all() -> None:
    p = pools.parse(" en = tiny.en : en ;\n rom=/models/large:v3:es,PT,it,fr ; de=Systran/faster-whisper-small:de;"
                    "rest=base:* ;")
    assert p.names == ("en", "rom", "de", "rest")
    assert p.get("rom").model == "/models/large:v3"  # the languages follow the last ':'
    assert p.get("rom").languages == ("es", "pt", "it", "fr")
    assert p.get("de").model == "Systran/faster-whisper-small"
    assert [p.route(x).name for x in ("en", "pt", "de", "auto", "zh")] == ["en", "rom", "de", "rest", "rest"]
    assert pools.parse(p.spec) == p  # the canonical form `tolk up` hands its children


@pytest.mark.parametrize("spec, message", [
    ("", "no pools"),
    (" ; ", "no pools"),
    ("en=tiny.en:en", "exactly one pool must take '*'"),
    ("a=base:*;b=small:*", "exactly one pool must take '*'"),
    ("a=base:*;a=tiny.en:en", "names repeat"),
    ("EN=tiny.en:en;m=base:*", "pool name 'EN'"),
    ("en_us=tiny.en:en;m=base:*", "pool name 'en_us'"),
    ("-en=tiny.en:en;m=base:*", "pool name '-en'"),
    ("averyveryverylongname=tiny.en:en;m=base:*", "pool name"),
    ("en=tiny.en:eng;m=base:*", "not a Whisper language code: eng"),
    ("en=tiny.en:en;x=small:en;m=base:*", "language 'en' is in pools 'en' and 'x'"),
    ("m=base:de,*", "'*' stands alone"),
    ("en=tiny.en:;m=base:*", "lists no languages"),
    ("en=tiny.en;m=base:*", "is not NAME=MODEL:LANGUAGES"),
    ("tiny.en:en;m=base:*", "is not NAME=MODEL:LANGUAGES"),
    ("en=:en;m=base:*", "is not NAME=MODEL:LANGUAGES"),
])
def test_malformed_specs_are_refused_with_a_reason(spec: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        pools.parse(spec)


def test_an_stt_process_serves_exactly_one_pool() -> None:
    default = pools.load({})
    assert default.serving("multi").model == "base"
    with pytest.raises(SettingsError, match=r"several STT pools are configured .*set TOLK_STT_POOL"):
        default.serving("")
    with pytest.raises(SettingsError, match="'fr' is not a configured STT pool"):
        default.serving("fr")


def test_a_pool_reads_its_own_settings_over_the_common_ones() -> None:
    env = {"TOLK_BEAM_SIZE": "5", "TOLK_POOL_MULTI__BEAM_SIZE": "2", "TOLK_POOL_EN_GB__LOADED_WINDOW_S": "20",
           "TOLK_POOL_MULTI__": "ignored"}
    multi, en_gb = pools.settings_env("multi", env), pools.settings_env("en-gb", env)
    assert multi["TOLK_BEAM_SIZE"] == "2" and "TOLK_LOADED_WINDOW_S" not in multi and "TOLK_" not in multi
    assert en_gb["TOLK_BEAM_SIZE"] == "5" and en_gb["TOLK_LOADED_WINDOW_S"] == "20"


# ------------------------------------------------------------------------------------------- topology


def subjects_overlap(a: str, b: str) -> bool:
    """Whether two NATS subject filters made of tokens and `*` can match the same subject."""
    ta, tb = a.split("."), b.split(".")
    return len(ta) == len(tb) and all(x == y or "*" in (x, y) for x, y in zip(ta, tb, strict=True))


def test_every_pool_gets_its_own_pair_of_durables_and_no_filters_overlap() -> None:
    topo = topology.load(pools=pools.parse("en=tiny.en:en;de=small:de;multi=base:*"))
    stt = {c.name: c.filter_subject for c in topo.expanded_consumers() if c.stream == "TOLK_SEGMENTS"}
    assert stt == {f"stt-{kind}-{pool}": f"tolk.segment.{kind}.{pool}.*.*"
                   for kind in ("final", "partial") for pool in ("en", "de", "multi")}
    (segments,) = [s for s in topo.streams if s.name == "TOLK_SEGMENTS"]
    assert segments.subjects == ["tolk.segment.*.*.*.*"]
    assert pools.subject("final", "de", 3, "s1") == "tolk.segment.final.de.3.s1"
    # A work-queue stream gives each message to one consumer: their filters must not overlap.
    for stream in (s.name for s in topo.streams if s.retention == "workqueue"):
        filters = [c.filter_subject for c in topo.expanded_consumers() if c.stream == stream]
        assert not [f for f in filters if ">" in f]
        for a, b in itertools.combinations(filters, 2):
            assert not subjects_overlap(a, b), (stream, a, b)
    assert subjects_overlap("tolk.segment.final.*.*", "tolk.segment.final.*.*")  # the check itself
    assert not subjects_overlap("tolk.segment.final.*.*", "tolk.segment.final.en.*.*")
    (final,) = [c for c in topo.consumers if c.name == "stt-final-{pool}"]
    assert final.superseded("stt-final") and final.superseded("stt-final-gone")
    assert not final.superseded("stt-partial-gone") and not final.superseded("translator")


def test_stt_and_edge_may_use_any_pools_durables() -> None:
    grants = permissions.grants(8)
    assert {"$JS.API.CONSUMER.MSG.NEXT.TOLK_SEGMENTS.*", "$JS.ACK.TOLK_SEGMENTS.*.>"} <= set(grants["stt"].publish)
    assert "$JS.API.CONSUMER.INFO.TOLK_SEGMENTS.*" in grants["edge"].publish
    assert not [s for s in grants["edge"].publish if s.startswith(("$JS.ACK", "$JS.API.CONSUMER.MSG.NEXT.TOLK_SEG"))]
    assert "tolk.segment.>" in grants["segmenter"].publish


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_nats(tmp_path: Path) -> AsyncIterator[Bus]:
    server = EmbeddedNats(tmp_path)
    bus = await Bus.connect(await server.start(), name="test-pools")
    try:
        yield bus
    finally:
        await bus.close()
        await server.stop()


def pre_pool(topo: topology.Topology) -> topology.Topology:
    """The topology as it was before pools: 3-token segment subjects, one `stt-final` / `stt-partial`."""
    streams = [msgspec.structs.replace(s, subjects=["tolk.segment.*.*.*"]) if s.name == "TOLK_SEGMENTS" else s
               for s in topo.streams]
    consumers = [msgspec.structs.replace(c, name=c.name.replace("-{pool}", ""),
                                         filter_subject=c.filter_subject.replace(".{pool}", ""), replaces=[])
                 if c.pooled else c for c in topo.consumers]
    return msgspec.structs.replace(topo, streams=streams, consumers=consumers)


async def durables(bus: Bus, stream: str = "TOLK_SEGMENTS") -> set[str]:
    return {c.name for c in await bus.js.consumers_info(stream)}


@on_loop
async def test_apply_migrates_a_pre_pool_deployment_and_follows_pool_changes(fresh_nats: Bus) -> None:
    js = fresh_nats.js
    two = topology.load(pools=pools.parse("en=tiny.en:en;multi=base:*"))
    await topology.apply(js, pre_pool(two))
    assert await durables(fresh_nats) == {"stt-final", "stt-partial"}
    await js.publish("tolk.segment.final.0.old", b"a final no STT took yet")

    # The stream's subjects change in place; the drained pre-pool durable goes, the one still holding a final
    # stays (an old STT replica may still be working through it).
    report = await topology.apply(js, two)
    assert (await js.stream_info("TOLK_SEGMENTS")).config.subjects == ["tolk.segment.*.*.*.*"]
    assert await durables(fresh_nats) == {"stt-final", "stt-final-en", "stt-final-multi", "stt-partial-en",
                                          "stt-partial-multi"}
    assert "consumer TOLK_SEGMENTS/stt-partial: deleted (no longer declared)" in report
    assert any(line.startswith("consumer TOLK_SEGMENTS/stt-final: no longer declared; kept while 1 pending")
               for line in report), report
    await js.purge_stream("TOLK_SEGMENTS")
    assert "consumer TOLK_SEGMENTS/stt-final: deleted (no longer declared)" in await topology.apply(js, two)

    # A pool added, then taken out again: its durables come and go with it.
    three = topology.load(pools=pools.parse("en=tiny.en:en;de=small:de;multi=base:*"))
    await topology.apply(js, three)
    assert {"stt-final-de", "stt-partial-de"} <= await durables(fresh_nats)
    await js.publish(pools.subject("partial", "de", 0, "s"), b"pending partial")
    await topology.apply(js, two)
    assert await durables(fresh_nats) == {"stt-final-en", "stt-final-multi", "stt-partial-en", "stt-partial-multi",
                                          "stt-partial-de"}
    await js.purge_stream("TOLK_SEGMENTS")
    await topology.apply(js, two)
    assert await durables(fresh_nats) == {"stt-final-en", "stt-final-multi", "stt-partial-en", "stt-partial-multi"}
    # Nothing else is touched: other streams' durables are all there.
    assert await durables(fresh_nats, "TOLK_TRANSCRIPTS") == {"translator"}


# ------------------------------------------------------------------------------------------- a real `tolk up`


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """`tolk up` as a newcomer runs it: neither TOLK_STT_POOLS nor TOLK_MODEL, so the default pools. One start
    for the whole module (it loads two models)."""
    # One pool-only setting (its value keeps the full window: only its measurement shows, on that pool alone).
    run = start_tolk(tmp_path_factory.mktemp("tolk-pools"), env={"TOLK_MODEL": "", "TOLK_STT_POOLS": "",
                                                                  "TOLK_POOL_MULTI__FULL_WINDOW_EXTRA_S": "1000"})
    yield run
    stop_tolk(run)


def tolk_json(run: Running, *args: str) -> Any:
    out = subprocess.run([TOLK, *args, "--data-dir", str(run.log.parent / "data")], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if args[-1] == "--json" else out.stdout


def stt_metrics(run: Running) -> dict[str, str]:
    """Each STT pool's /metrics, found through its heartbeat (`tolk status --json`: pool and metrics port)."""
    return {a["info"]["pool"]: text for a, text in stt_scrapes(run.log.parent / "data")}


def finals_by_pool(before: dict[str, str], after: dict[str, str]) -> dict[str, int]:
    """Finals each pool transcribed between two scrapes (one latency observation per published final)."""
    name = "tolk_stt_latency_seconds_count"
    return {pool: round(metric_sum(after[pool], name, kind="final") - metric_sum(before[pool], name, kind="final"))
            for pool in after}


def clip(name: str) -> Clip:
    return next(c for c in clips() if c.name.startswith(name))


ENGLISH, GERMAN = "en_jfk", "de_fleurs_004"  # 11 s and 10 s of speech


def test_status_shows_each_pool_with_its_model_languages_and_lag(pooled: Running) -> None:
    status = tolk_json(pooled, "status", "--json")
    rows = {p["pool"]: p for p in status["stt_pools"]}
    assert {k: (v["model"], v["languages"], v["ready"], v["down"]) for k, v in rows.items()} == {
        "en": ("tiny.en", "en", 1, 0), "multi": ("base", "*", 1, 0)}
    consumers = {c["consumer"] for s in status["streams"] if s["stream"] == "TOLK_SEGMENTS" for c in s["consumers"]}
    assert consumers == {"stt-final-en", "stt-partial-en", "stt-final-multi", "stt-partial-multi"}
    table = tolk_json(pooled, "status")
    assert "STT POOL" in table and "multi" in table and "pool en" in table, table
    # `tolk up` named its children after their pools, and kept `actor stt` in their command line.
    log = pooled.log.read_text()
    assert "started stt-en (pid" in log and "started stt-multi (pid" in log
    stt = [p for p in pooled.descendants() if "actor stt" in " ".join(p.cmdline())]
    assert sorted(p.environ()["TOLK_STT_POOL"] for p in stt) == ["en", "multi"]
    # The multi pool's own setting reached its process alone.
    scraped = stt_metrics(pooled)
    assert metric_sum(scraped["multi"], "tolk_stt_full_window_extra_seconds", pool="multi") > 0
    assert "tolk_stt_full_window_extra_seconds{" not in scraped["en"]


@on_loop
async def test_english_and_german_at_once_land_in_their_own_pools(pooled: Running) -> None:
    en, de = clip(ENGLISH), clip(GERMAN)
    before = stt_metrics(pooled)
    en_run, de_run = await asyncio.gather(
        stream_pcm(pooled.ws, *en.pcm16(), pace=2.0, language="en"),
        stream_pcm(pooled.ws, *de.pcm16(), pace=2.0, language="de"))
    after = stt_metrics(pooled)
    for run in (en_run, de_run):
        assert run.done and run.finals and not run.errors, run.errors
    assert finals_by_pool(before, after) == {"en": len(en_run.finals), "multi": len(de_run.finals)}
    assert {r["language"] for r in en_run.finals} == {"en"} and {r["language"] for r in de_run.finals} == {"de"}
    en_wer = corpus_wer([(en.reference, en_run.text())])
    de_wer = corpus_wer([(de.reference, de_run.text())], language="de")
    print(f"WER en (tiny.en) {en_wer:.3f}, de (base) {de_wer:.3f}: {de_run.text()!r}")
    assert en_wer < 0.15, en_run.text()
    assert de_wer < 0.35, de_run.text()  # measured 0.14 (2 CPU cores, int8)


@on_loop
async def test_a_session_switching_language_moves_pools_and_loses_no_final(pooled: Running) -> None:
    en, de = clip(ENGLISH), clip(GERMAN)
    (en_pcm, rate), (de_pcm, _) = en.pcm16(), de.pcm16()
    gap = b"\x00\x00" * int(rate * 2.0)  # 2 s of silence: the English utterance ends in it
    switch_at = len(en_pcm) / 2 / rate + 1.0
    before = stt_metrics(pooled)
    run = await stream_pcm(pooled.ws, en_pcm + gap + de_pcm, rate, pace=2.0, language="en",
                           configure=[(switch_at, {"language": "de"})], session_id="pools-switch")
    after = stt_metrics(pooled)
    assert run.done and not run.errors, run.errors
    assert [ack["language"] for _, ack in run.configured] == ["de"]
    english = [r for r in run.finals if r["end"] <= switch_at]
    german = [r for r in run.finals if r["end"] > switch_at]
    assert english and german
    assert {r["language"] for r in english} == {"en"} and {r["language"] for r in german} == {"de"}
    assert finals_by_pool(before, after) == {"en": len(english), "multi": len(german)}
    # Every final the segmenter numbered was transcribed and stored once, and the client got them in that order.
    stored = [json.loads(line)["data"] for line in tolk_json(
        pooled, "tap", "tolk.transcript.*.pools-switch", "--all", "--idle-exit", "3").splitlines()]
    finals = sorted((t for t in stored if t["kind"] == "final"), key=lambda t: t["final_index"])
    assert [t["final_index"] for t in finals] == list(range(1, len(run.finals) + 1))
    assert [t["text"] for t in finals] == [r["text"] for r in run.finals]
    assert [r["seq"] for r in run.results] == sorted(r["seq"] for r in run.results)
    en_wer = corpus_wer([(en.reference, " ".join(r["text"] for r in english))])
    de_wer = corpus_wer([(de.reference, " ".join(r["text"] for r in german))], language="de")
    print(f"switching session: WER en (tiny.en) {en_wer:.3f}, de (base) {de_wer:.3f}")
    assert en_wer < 0.15 and de_wer < 0.35


@on_loop
async def test_the_edge_sheds_new_sessions_on_the_backlog_of_their_own_pool(
        fresh_nats: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLK_STT_POOLS", pools.DEFAULT)
    await topology.apply(fresh_nats.js, topology.load())
    for i in range(10):  # English finals waiting for an STT of pool `en` that is not there
        seg = Segment(session_id="backlog", utterance_id=i, seq=i + 1, final_index=i + 1, kind=SegmentKind.FINAL,
                      audio=bytes(3200), start=i, end=i + 0.1, language="en", speech_end_wall=0.0, partition=0)
        await fresh_nats.js.publish(pools.subject("final", "en", 0, "backlog"), encode(seg))
    start = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le"}
    async with edge_server(fresh_nats, shed_backlog=5) as url, aiohttp.ClientSession() as http:
        for language, expected in (("en", "error"), ("de", "started"), ("auto", "started")):
            async with http.ws_connect(url.replace("http", "ws", 1) + "/v1/listen") as ws:
                await ws.send_json({**start, "language": language})
                reply = await ws.receive_json(timeout=10)
                assert reply["type"] == expected, (language, reply)
                if expected == "error":
                    assert reply["code"] == "overloaded" and "behind" in reply["message"]
