"""Per-actor NATS users (nats/permissions.toml) against a real nats-server started with the generated
`authorization` block: what an actor may not do is refused by the server, what it does still works, and a
real `tolk up` runs every actor under its own user without a single permission violation."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

import nats
from actors.runtime import permissions, pools, topology
from actors.runtime.bus import Bus, NatsAuth
from actors.runtime.embedded import EmbeddedNats
from edge.core import replay
from loadtest.client import stream_pcm
from loadtest.speech import clips
from schemas import AudioChunk, ResultKind, Transcript, encode
from tests.conftest import Running

on_loop = pytest.mark.asyncio(loop_scope="session")

HELM_JSON = Path(__file__).resolve().parents[1] / "helm" / "tolk" / "files" / "nats-permissions.json"
POOL = pools.load().route("en").name  # the STT pool English goes to (conftest: one pool)


@dataclass
class Secured:
    url: str
    passwords: dict[str, str]
    admin: Bus
    conf: Path
    opened: list[Client] = field(default_factory=list)

    async def client(self, user: str, password: str | None = None) -> tuple[Client, list[str]]:
        """A raw connection as `user` (its own inbox prefix, as the bus sets it) and the errors NATS reports."""
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(self.url, user=user, password=password or self.passwords[user],
                                inbox_prefix=f"_INBOX.{user}", error_cb=on_error, max_reconnect_attempts=0,
                                allow_reconnect=False)
        self.opened.append(nc)
        return nc, errors

    async def bus(self, user: str) -> Bus:
        return await Bus.connect(self.url, f"test-{user}", first_attempt_s=5,
                                 auth=NatsAuth(nats_user=user, nats_password=self.passwords[user]))


@pytest_asyncio.fixture(loop_scope="session")
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    by_user = permissions.grants(topology.load().partitions)
    passwords = permissions.new_passwords(by_user)
    server = EmbeddedNats(tmp_path, authorization=permissions.authorization(passwords, by_user))
    url = await server.start()
    admin = await Bus.connect(url, "test-admin", first_attempt_s=5,
                              auth=NatsAuth(nats_user="admin", nats_password=passwords["admin"]))
    await topology.apply(admin.js, topology.load())
    s = Secured(url, passwords, admin, server.conf_path)
    try:
        yield s
    finally:
        for nc in s.opened:
            if not nc.is_closed:
                await nc.close()
        await admin.close()
        await server.stop()


async def stream_count(bus: Bus, stream: str, subject: str) -> int:
    info = await bus.js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


def chunk(sid: str, seq: int = 1) -> AudioChunk:
    return AudioChunk(session_id=sid, chunk_seq=seq, sample_rate=16000, encoding="pcm_s16le", language="en",
                      data=b"\x00\x00" * 160, received_at=0.0)


def transcript(sid: str) -> Transcript:
    return Transcript(session_id=sid, utterance_id=1, seq=1, final_index=1, kind=ResultKind.FINAL, partition=0,
                      text="forged", language="en", end=1.0)


@on_loop
async def test_server_config_is_private_and_needs_a_user(secured: Secured) -> None:
    assert stat.S_IMODE(secured.conf.stat().st_mode) == 0o600
    for kwargs in ({}, {"user": "edge", "password": "wrong"}, {"user": "edge", "password": secured.passwords["admin"]},
                   {"user": "nobody", "password": "x"}):
        with pytest.raises(Exception, match=r"(?i)authorization"):
            nc = await nats.connect(secured.url, max_reconnect_attempts=0, allow_reconnect=False,
                                    connect_timeout=3, **kwargs)
            await nc.close()


@on_loop
async def test_edge_cannot_forge_pipeline_output(secured: Secured) -> None:
    nc, errors = await secured.client("edge")
    js = nc.jetstream(timeout=1.5)
    data = encode(transcript("forged"))
    for subject in ("tolk.transcript.0.forged", "tolk.result.0.forged", pools.subject("final", POOL, 0, "forged"),
                    "tolk.captions.ch=radio", "tolk.deadletter.TOLK_RESULTS.fanout-p0"):
        with pytest.raises(nats.errors.TimeoutError):  # the server drops it: no stream ever acks
            await js.publish(subject, data)
        assert any(f"permissions violation for publish to \"{subject.lower()}\"" in e.lower() for e in errors), subject
    for stream, subject in (("TOLK_TRANSCRIPTS", "tolk.transcript.>"), ("TOLK_RESULTS", "tolk.result.>"),
                            ("TOLK_SEGMENTS", "tolk.segment.>")):
        assert await stream_count(secured.admin, stream, subject) == 0
    # Nor another actor's heartbeat, nor a durable consumer of its own making (or a change to fan-out's).
    with pytest.raises(nats.errors.TimeoutError):
        await js.publish("$KV.tolk_actors.stt.fake", b"")
    with pytest.raises(nats.errors.TimeoutError):
        await js.add_consumer("TOLK_RESULTS", ConsumerConfig(durable_name="fanout-p0", name="fanout-p0",
                                                            filter_subject="tolk.result.1.*"))
    info = await secured.admin.js.consumer_info("TOLK_RESULTS", "fanout-p0")
    assert info.config.filter_subject == "tolk.result.0.*"


@on_loop
async def test_edge_cannot_read_segments_or_other_actors_replies(secured: Secured) -> None:
    nc, errors = await secured.client("edge")
    got: list[str] = []

    async def on_msg(msg: Any) -> None:
        got.append(msg.subject)

    for subject in ("tolk.segment.>", "tolk.audio.>", "_INBOX.stt.>", "_INBOX.>", ">"):
        await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    await asyncio.sleep(0.3)
    for subject in ("tolk.segment.>", "tolk.audio.>", "_INBOX.stt.>"):
        assert any("permissions violation" in e.lower() and "subscription" in e.lower() and subject.lower() in e.lower()
                   for e in errors), (subject, errors)
    await secured.admin.nc.publish(pools.subject("final", POOL, 0, "x"), b"secret")
    await secured.admin.nc.publish("_INBOX.stt.abc", b"secret")
    await secured.admin.nc.flush()
    await asyncio.sleep(0.3)
    assert got == []


@on_loop
async def test_exporter_restores_a_transient_stream_that_is_gone(secured: Secured) -> None:
    """A standalone server's restart drops memory streams: the exporter, under its own user, puts them back."""
    from actors.exporter.actor import ExporterActor, ExporterSettings
    from actors.runtime import settings
    from actors.runtime.actor import RuntimeSettings

    await secured.admin.js.delete_stream("TOLK_SEGMENTS")
    bus = await secured.bus("exporter")
    try:
        await ExporterActor(bus, settings.load(RuntimeSettings, env={}), ExporterSettings()).scrape()
        assert (await secured.admin.js.stream_info("TOLK_SEGMENTS")).config.storage == "memory"
        assert {c.name for c in await secured.admin.js.consumers_info("TOLK_SEGMENTS")} == {
            c.name for c in topology.load().expanded_consumers() if c.stream == "TOLK_SEGMENTS"}
    finally:
        await bus.close()


@on_loop
async def test_stt_cannot_publish_audio_and_translator_cannot_publish_transcripts(secured: Secured) -> None:
    for user, subject in (("stt", "tolk.audio.0.x"), ("stt", "tolk.result.0.x"),
                          ("translator", "tolk.transcript.0.x"), ("segmenter", "tolk.result.0.x"),
                          ("fanout", "tolk.audio.0.x"), ("ingest", "tolk.transcript.0.x"),
                          ("exporter", "tolk.audio.0.x")):
        nc, errors = await secured.client(user)
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream(timeout=1.0).publish(subject, b"x")
        assert any("permissions violation" in e.lower() for e in errors), (user, subject, errors)


@on_loop
async def test_each_actor_can_do_what_its_code_does(secured: Secured) -> None:
    """The calls each actor makes, through the same Bus and consumer code, under its own user."""
    edge = await secured.bus("edge")
    seg = await secured.bus("segmenter")
    stt = await secured.bus("stt")
    translator = await secured.bus("translator")
    fanout = await secured.bus("fanout")
    try:
        # edge: audio in, its KV buckets, the STT backlog, replay, heartbeats and channels read back
        await edge.publish_audio(chunk("s1"), 0)
        sessions = await edge.kv("tolk_sessions")
        rev = await sessions.create("s1", b"rec")
        await sessions.update("s1", b"rec2", last=rev)
        assert (await sessions.get("s1")).value == b"rec2"
        await (await edge.kv("tolk_listeners")).put("s1.owner", b"x")
        await (await edge.kv("tolk_listeners")).delete("s1.owner")
        assert (await edge.js.consumer_info("TOLK_SEGMENTS", pools.durable("final", POOL))).num_pending == 0
        await (await edge.kv("tolk_actors")).put("edge.i1", b"beat")
        assert "edge.i1" in await (await edge.kv("tolk_actors")).keys()
        await (await secured.admin.kv("tolk_channels")).put("radio", b"c")
        assert await (await edge.kv("tolk_channels")).keys() == ["radio"]
        # segmenter: fetch and ack its partition's audio, publish segments and its checkpoint
        sub = await seg.js.pull_subscribe_bind("segmenter-p0", stream="TOLK_AUDIO")
        (msg,) = await sub.fetch(1, timeout=5)
        await msg.in_progress()
        await msg.ack_sync()
        await seg.js.publish(pools.subject("final", POOL, 0, "s1"), b"seg")
        await (await seg.kv("tolk_segmenter")).put("s1", b"ckpt")
        await seg.js.delete_consumer("TOLK_AUDIO", "segmenter-p0")  # re-created on start (crash replay)
        await seg.js.add_consumer("TOLK_AUDIO", topology.consumer_config(topology.load().consumer("segmenter-p0")))
        # stt: the finals consumer, transcripts out
        sub = await stt.js.pull_subscribe_bind(pools.durable("final", POOL), stream="TOLK_SEGMENTS")
        (msg,) = await sub.fetch(1, timeout=5)
        await msg.ack_sync()
        await stt.publish("tolk.transcript.0.s1", transcript("s1"), msg_id="s1:1")
        # translator: transcripts in (with its listener watch), results out
        watcher = await (await translator.kv("tolk_listeners")).watchall()
        await watcher.stop()  # type: ignore[no-untyped-call]
        sub = await translator.js.pull_subscribe_bind("translator", stream="TOLK_TRANSCRIPTS")
        (msg,) = await sub.fetch(1, timeout=5)
        await translator.publish("tolk.result.0.s1", transcript("s1"), msg_id="s1:r1")
        await msg.ack_sync()
        # fanout: results in, live out and captions, progress in KV
        sub = await fanout.js.pull_subscribe_bind("fanout-p0", stream="TOLK_RESULTS")
        (msg,) = await sub.fetch(1, timeout=5)
        live = await edge.nc.subscribe("tolk.session.s1.out")
        await edge.nc.flush()
        await fanout.nc.publish("tolk.session.s1.out", b"live")
        await fanout.nc.flush()  # on the server before the wait starts: a busy box once took over 2 s otherwise
        assert (await live.next_msg(timeout=5)).data == b"live"
        await fanout.publish("tolk.captions.ch=radio", transcript("s1"), msg_id="c1")
        await (await fanout.kv("tolk_fanout")).put("s1", b"2")
        await msg.ack_sync()
        # edge again: the session's results read back (resume, export)
        assert [t.text for t in await replay.stored(edge, "s1")] == ["forged"]
        assert len(await replay.read_all(edge, "tolk.captions.ch=radio", "TOLK_CAPTIONS", Transcript)) == 1
    finally:
        for b in (edge, seg, stt, translator, fanout):
            await b.close()


@on_loop
async def test_edge_grant_excludes_pipeline_subjects() -> None:
    by_user = permissions.grants(topology.load().partitions)
    edge = by_user["edge"]
    for forbidden in ("tolk.transcript", "tolk.result", "tolk.segment", "tolk.captions", "$JS.ACK", ">"):
        assert not any(s == forbidden or s.startswith(forbidden + ".") for s in edge.publish), forbidden
    assert not any(s.startswith("tolk.segment") or s.startswith("tolk.audio") for s in edge.subscribe)
    assert "_INBOX.>" not in edge.subscribe and "_INBOX.edge.>" in edge.subscribe
    assert by_user["stt"].publish.count("tolk.transcript.>") == 1
    assert not any(s.startswith("tolk.audio") for s in by_user["stt"].publish)


def test_helm_chart_carries_the_same_permissions() -> None:
    """helm/tolk/files/nats-permissions.json is generated: `python -m actors.runtime.permissions > …`."""
    current = {n: msgspec.to_builtins(g) for n, g in permissions.grants(topology.load().partitions).items()}
    assert json.loads(HELM_JSON.read_text()) == current, "regenerate helm/tolk/files/nats-permissions.json"


@pytest.mark.e2e
@on_loop
async def test_tolk_up_runs_every_actor_as_its_own_user(tolk: Running) -> None:
    data = tolk.log.parent / "data"
    users = data / "run" / permissions.USERS_FILE
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    seen = {}
    for proc in tolk.descendants():
        with_env = proc.environ() if proc.is_running() else {}
        if "TOLK_NATS_USER" in with_env:
            seen[proc.cmdline()[-1]] = with_env["TOLK_NATS_USER"]
    actors = ("edge", "segmenter", "stt", "translator", "diarizer", "fanout", "ingest", "exporter")
    assert seen == {a: a for a in actors}
    c = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    pcm, rate = c.pcm16()
    run = await stream_pcm(tolk.ws, pcm, rate, pace=2.0)
    assert run.done and run.finals and not run.errors
    assert "Violation" not in tolk.log.read_text(), "an actor was refused something its code does"
    # The edge's own password, on the live server: it still cannot publish a transcript.
    url = json.loads(next((data / "run").glob("*.ports")).read_text())["nats"][0]
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(url, user="edge", password=permissions.local_password(data, "edge"),
                            inbox_prefix="_INBOX.edge", error_cb=on_error, max_reconnect_attempts=0)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream(timeout=1.0).publish(f"tolk.transcript.0.{run.session_id}", b"x")
    finally:
        await nc.close()
    assert any("permissions violation" in e.lower() for e in errors)


def test_compose_authorization_is_current() -> None:
    """nats/compose-auth.conf (the official nats image reads it, with no Tolk code) matches the declarations."""
    from actors.runtime import topology

    current = permissions.env_authorization(permissions.grants(topology.load().partitions))
    conf = Path(__file__).resolve().parents[1] / "nats" / "compose-auth.conf"
    assert conf.read_text() == current, "regenerate: python -m actors.runtime.permissions --env-conf"
    for user in permissions.load():
        assert f"password: ${permissions.password_env(user)}," in current
