"""Fixtures: a real nats-server per test run, and a real `tolk up` (subprocess) for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from actors.runtime import topology
from actors.runtime.bus import Bus
from actors.runtime.embedded import EmbeddedNats
from loadtest.ports import free_port
from loadtest.speech import speech_dir

TOLK = str(Path(sys.executable).parent / "tolk")

# No test may reach the Hugging Face hub: models come from folders or a cache the tests build. Set at
# import, before anything imports huggingface_hub (it reads these once); `tolk up` children inherit them.
HF_HOME = Path(tempfile.mkdtemp(prefix="tolk-hf-"))
os.environ["HF_HOME"] = str(HF_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("TRANSFORMERS_CACHE", None)
# Every `tolk up` and actor the tests start runs one STT pool on tiny.en (docs/configuration.md#stt-pools): what
# all of them but test_pools.py need, without the default pools' second model. test_pools.py runs the default pools.
os.environ.setdefault("TOLK_MODEL", "tiny.en")


def pytest_configure(config: pytest.Config) -> None:
    if not (speech_dir() / "manifest.tsv").exists():
        raise pytest.UsageError(f"real speech corpus not found at {speech_dir()} (set TOLK_SPEECH_DIR)")


@pytest_asyncio.fixture(scope="session")
async def nats_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    url = await server.start()
    yield url
    await server.stop()


@pytest_asyncio.fixture(scope="session")
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, name="tests")
    await topology.apply(b.js, topology.load())
    yield b
    await b.close()


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    http: str
    ws: str
    log: Path

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def wait_ready(http: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tolk up exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{http}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"tolk up not ready in {timeout}s:\n{log.read_text()[-4000:]}")


UPLOAD_LIMIT = 8_000_000  # tests' upload limit (the default is 200 MB), so a "huge" upload stays cheap


def start_tolk(tmp: Path, extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> Running:
    port = free_port()
    log = tmp / "tolk-up.log"
    args = [TOLK, "up", "--data-dir", str(tmp / "data"), "--port", str(port), *(extra_args or [])]
    # Admission by measured capacity is off: tests start sessions back to back on a shared box, each expecting its
    # own to run; tests/test_shedding.py tests the admission itself.
    full_env = {**os.environ, "TOLK_ADMIT_FINAL_BUSY": "0", "TOLK_IDLE_TIMEOUT_S": "4", "TOLK_SSE_PING_S": "1",
                "TOLK_MODEL_CACHE": str(tmp / "models"), "TOLK_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
                "TOLK_UPLOAD_DIR": str(tmp / "uploads"), **(env or {})}
    full_env.pop("TOLK_NATS_URL", None)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=full_env)
    http = f"http://127.0.0.1:{port}"
    wait_ready(http, proc, log)
    return Running(proc, http, f"ws://127.0.0.1:{port}/v1/listen", log)


def stop_tolk(run: Running, timeout: float = 90) -> None:
    """SIGTERM must stop everything: exit 0, and no process of the tree left behind."""
    children = run.descendants()
    assert children, "tolk up should have child processes"
    run.proc.send_signal(signal.SIGTERM)
    try:
        code = run.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for c in children:
            c.kill()
        run.proc.kill()
        raise AssertionError(f"tolk up did not stop within {timeout}s:\n{run.log.read_text()[-4000:]}") from None
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphans left after SIGTERM: {[p.pid for p in alive]}"
    assert code == 0, f"tolk up exited {code}:\n{run.log.read_text()[-4000:]}"


@pytest.fixture(scope="session")
def tolk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    run = start_tolk(tmp_path_factory.mktemp("tolk"))
    yield run
    stop_tolk(run)


@asynccontextmanager
async def edge_server(bus: Bus, **edge_settings: Any) -> AsyncIterator[str]:
    """A real edge app (no pipeline behind it) on a free port: yields its base URL, http://127.0.0.1:<port>."""
    from actors.runtime import settings
    from actors.runtime.actor import RuntimeSettings
    from edge.app import Edge
    from edge.settings import EdgeSettings

    edge = Edge(bus, settings.load(RuntimeSettings, env={}), settings.load(EdgeSettings, env={}, **edge_settings),
                topology.load())
    srv = TestServer(edge.app)
    await srv.start_server()
    try:
        yield str(srv.make_url("")).rstrip("/")
    finally:
        await srv.close()


class Proxy:
    """A TCP hop between the browser and the edge that the test can cut, like a network drop."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.pipes: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.pipes -= {writer, up_writer}

    def cut(self) -> int:
        """Drops every open connection at once (no close handshake): what a lost network looks like."""
        n = len(self.pipes)
        for w in list(self.pipes):
            w.transport.abort()
        return n

    async def close(self) -> None:
        self.cut()
        if self.server:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private PulseAudio server with one null sink (`tolk_test`): what the computer "plays" goes there, and
    its monitor is the system audio."""
    assert shutil.which("pulseaudio") and shutil.which("paplay"), "pulseaudio, pulseaudio-utils (.ci/run installs)"
    runtime = tmp_path_factory.mktemp("pulse")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime),
           "PULSE_SERVER": f"unix:{runtime}/pulse/native"}
    proc = subprocess.Popen(["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
                             "-F", "/dev/null", "--load=module-native-protocol-unix",
                             "--load=module-null-sink sink_name=tolk_test"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run(["pactl", "info"], env=env, capture_output=True, check=False).returncode == 0:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError("pulseaudio did not start")
    yield env
    proc.terminate()
    proc.wait(10)
