"""Whisper models by faster-whisper name (`small`, `large-v3`, `turbo`…) or Hugging Face repo id
(`Systran/faster-whisper-small`): found in a Hugging Face cache, else downloaded once into Tolk's model cache.

The cache is Hugging Face's own layout (`models--org--name/snapshots/<rev>/`), so a cache filled on a
connected machine (`tolk models pull`, or faster-whisper itself) can be copied to an air-gapped one as is.
Downloads go through `huggingface_hub.snapshot_download`, with faster-whisper's file patterns; its progress
bars go to stderr, and the log gets the size, progress and destination, so an operator sees why a first
start is slow.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from actors.stt.folder import REQUIRED, ModelError

if TYPE_CHECKING:
    from huggingface_hub.hf_api import RepoSibling

log = logging.getLogger("tolk.stt.models")

# faster_whisper.utils.download_model's allow_patterns: the files WhisperModel reads, nothing else.
ALLOW_PATTERNS = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PROGRESS_EVERY_S = 5.0


def known_models() -> dict[str, str]:
    """faster-whisper's name → repo table, used as is so a name means here what it means there."""
    from faster_whisper.utils import _MODELS, available_models

    return {name: _MODELS[name] for name in available_models()}


def repo_id(name: str) -> str | None:
    """`small` → `Systran/faster-whisper-small`; `org/name` → itself; anything else → None."""
    if REPO_ID.match(name):
        return name
    return known_models().get(name)


def hf_cache() -> Path:
    """Hugging Face's own cache (HF_HUB_CACHE, else HF_HOME/hub), as huggingface_hub read it at import."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def caches(model_cache: str) -> list[Path]:
    """Where snapshots are looked for: Tolk's model cache (where downloads go), then Hugging Face's."""
    out: list[Path] = []
    for path in (Path(model_cache).expanduser(), hf_cache()):
        if path.absolute() not in [p.absolute() for p in out]:
            out.append(path)
    return out


def complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED)


def cached(repo: str, model_cache: str) -> Path | None:
    """The complete snapshot of `repo` (its `main`) in one of the caches, without any network access."""
    from huggingface_hub import snapshot_download

    for cache in caches(model_cache):
        try:
            folder = Path(snapshot_download(repo, cache_dir=str(cache), local_files_only=True,
                                            allow_patterns=ALLOW_PATTERNS))
        except (OSError, ValueError):  # LocalEntryNotFoundError is both; ValueError: a malformed id
            continue
        if complete(folder):
            return folder
    return None


def locate(name: str, model_cache: str, download: bool = True) -> Path:
    """A faster-whisper name or repo id → its snapshot folder: from a cache, else downloaded (if allowed)."""
    repo = repo_id(name)
    if repo is None:
        raise ModelError(f"model {name!r}: not a folder, a faster-whisper name ({', '.join(known_models())}) "
                         "or a Hugging Face repo id (org/name)")
    folder = cached(repo, model_cache)
    if folder is not None:
        log.info("%s: from the cache, %s (%s)", _label(name, repo), folder, human(folder_size(folder)))
        return folder
    if not download:
        raise ModelError(f"model {name!r} ({repo}) is not in {_where(model_cache)} and downloads are off "
                         f"(TOLK_MODEL_DOWNLOAD=false). {_remedy(name, repo, model_cache)}")
    return fetch(name, repo, Path(model_cache).expanduser())


def fetch(name: str, repo: str, cache: Path) -> Path:
    """Download `repo`'s Whisper files into `cache` (resuming a partial download), logging progress."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo, files_metadata=True, timeout=60)
        files = [s for s in info.siblings or [] if any(fnmatch(s.rfilename, p) for p in ALLOW_PATTERNS)]
        if not any(f.rfilename == "model.bin" for f in files):
            raise ModelError(f"model {name!r}: {repo} on the hub is not a CTranslate2 Whisper model (no model.bin)")
        total = sum(f.size or 0 for f in files)
        log.info("%s: downloading %s (%s) into %s", _label(name, repo), human(total), _names(files), cache)
        started = time.monotonic()
        with Progress(_label(name, repo), cache / _repo_folder(repo) / "blobs", total):
            folder = Path(snapshot_download(repo, cache_dir=str(cache), allow_patterns=ALLOW_PATTERNS))
    except ModelError:
        raise
    except Exception as exc:  # offline, unreachable, no such repo, disk full: one line, not a traceback
        why, remedy = _why(exc, cache, _where(str(cache))), _remedy(name, repo, str(cache))
        raise ModelError(f"model {name!r} ({repo}): {why}. {remedy}") from exc
    if not complete(folder):
        raise ModelError(f"model {name!r}: {repo} lacks one of {', '.join(REQUIRED)}: not a CTranslate2 Whisper "
                         "model")
    log.info("%s: downloaded %s (100%%) in %.1f s to %s", _label(name, repo), human(total),
             time.monotonic() - started, folder)
    return folder


@dataclass
class Progress:
    """Logs a download's bytes and percent every few seconds by watching its blobs folder grow (the
    Hugging Face progress bars go to stderr, which a log collector may not keep)."""

    label: str
    blobs: Path
    total: int
    every_s: float = PROGRESS_EVERY_S

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-download-progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def done(self) -> int:
        """Bytes on disk so far, finished blobs and `.incomplete` ones alike."""
        try:
            return min(self.total, sum(p.stat().st_size for p in self.blobs.iterdir() if p.is_file()))
        except OSError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            got = self.done()
            pct = 100 * got // self.total if self.total else 0
            log.info("%s: %s of %s (%d%%)", self.label, human(got), human(self.total), pct)


@dataclass(frozen=True)
class Listed:
    name: str  # a faster-whisper name, or the repo id of another cached snapshot
    repo: str
    where: str  # "bundled", a snapshot folder, or "" when absent


def listing(model_cache: str) -> list[Listed]:
    """`tolk models list`: faster-whisper's names and other cached CTranslate2 Whisper repos, with where each is."""
    bundled = {"tiny.en", "base"}
    out = []
    for name, repo in known_models().items():
        folder = cached(repo, model_cache)
        out.append(Listed(name, repo, "bundled" if name in bundled else str(folder or "")))
    known = {item.repo for item in out}
    for cache in caches(model_cache):
        for entry in sorted(cache.glob("models--*--*")):
            repo = entry.name.removeprefix("models--").replace("--", "/", 1)
            folder = cached(repo, model_cache) if repo not in known else None
            if folder is not None:
                known.add(repo)
                out.append(Listed(repo, repo, str(folder)))
    return out


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())  # follows the snapshot's symlinks


def human(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _label(name: str, repo: str) -> str:
    return f"model {name}" if name == repo else f"model {name} ({repo})"


def _repo_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def _names(files: list[RepoSibling]) -> str:
    return ", ".join(f.rfilename for f in files)


def _where(model_cache: str) -> str:
    return " or ".join(str(c) for c in caches(model_cache))


def _remedy(name: str, repo: str, model_cache: str) -> str:
    """Exactly what to provide: a pulled cache folder copied into place, or a folder for TOLK_MODEL."""
    cache = Path(model_cache).expanduser()
    return (f"On a connected machine run `tolk models pull {name} --cache DIR` and copy "
            f"DIR/{_repo_folder(repo)} to {cache / _repo_folder(repo)}, or set TOLK_MODEL to a CTranslate2 "
            "Whisper folder")


def _why(exc: Exception, cache: Path, where: str) -> str:
    """One line saying why a download failed, in an operator's terms."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if constants.HF_HUB_OFFLINE:
        return f"not in {where}, and HF_HUB_OFFLINE is set, so it cannot be downloaded"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such repo on the Hugging Face hub (or it is private or gated: set HF_TOKEN)"
    if isinstance(exc, RevisionNotFoundError):
        return "the repo has no `main` revision"
    if isinstance(exc, HfHubHTTPError):
        return f"the Hugging Face hub answered: {_first_line(exc)}"
    if isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError) or getattr(exc, "errno", None):
        return f"cannot write to {cache}: {_first_line(exc)}"
    if isinstance(exc, OSError):  # requests' ConnectionError and Timeout are OSErrors without an errno
        return f"cannot reach the Hugging Face hub at {constants.ENDPOINT} ({type(exc).__name__})"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
