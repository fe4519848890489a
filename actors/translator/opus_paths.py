"""Where an Opus-MT pair's model is: its name, a local folder of models, the Hugging Face cache.

Shared by the engine (`actors.translator.opus`) and EasyNMT's local-first loader (`actors.translator.opus_local`),
so the loader does not import the engine for them.
"""

from __future__ import annotations

import os
from pathlib import Path

HF_ORG = "Helsinki-NLP"


def pair_name(src: str, tgt: str) -> str:
    return f"opus-mt-{src}-{tgt}"


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def in_hf_cache(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def local_path(local_dir: str, model_name: str) -> str | None:
    """`<local_dir>/opus-mt-x-y` for `Helsinki-NLP/opus-mt-x-y`, when that folder holds a model."""
    if not local_dir:
        return None
    path = Path(local_dir) / model_name.rsplit("/", 1)[-1]
    return str(path) if (path / "config.json").is_file() else None
