"""STT pools (`TOLK_STT_POOLS`): which Whisper model serves which spoken languages.

One setting, parsed here for every process that needs it: the segmenter routes each segment to its pool's
subject, each STT process serves one pool (`TOLK_STT_POOL`), `tolk nats apply` declares a pair of durables per
pool, `tolk up` starts an STT child per pool, and the edge sheds load on the backlog of the pool a new session
goes to. Pure: no NATS, no models.

Syntax: pools separated by `;`, each `NAME=MODEL:LANGUAGES`, languages comma-separated ISO 639-1 codes or `*`:

    en=tiny.en:en;multi=base:*

- NAME: 1-16 of `a-z 0-9 -`, starting and ending with a letter or digit. It is a NATS subject token, part of
  durable names (`stt-final-NAME`) and of Kubernetes object names (`<release>-stt-NAME`), hence that rule.
- MODEL: anything `TOLK_MODEL` accepts (passed through): a name (`tiny.en`, `base`, …), a hub id or a folder.
  The languages follow its last `:`, so a path may contain `:`; it may not contain `;` or `=`.
- LANGUAGES: codes Whisper knows, each in at most one pool; exactly one pool has `*`: every other language,
  and `auto` (detection needs a multilingual model).

Routing: the pool listing the language, else the `*` pool.

Unset (or empty): with `TOLK_MODEL` set, one pool `default=<TOLK_MODEL>:*` (every single-model deployment keeps
working); with neither, `en=tiny.en:en;multi=base:*`, so English gets the fast English-only model and every other
language is transcribed in that language, not forced into English.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import msgspec

from actors.runtime.settings import SettingsError
from schemas.languages import WHISPER_LANGUAGES

ANY = "*"
DEFAULT = "en=tiny.en:en;multi=base:*"
SINGLE = "default"  # the one pool's name when only TOLK_MODEL is set
ENV_POOLS = "TOLK_STT_POOLS"
ENV_POOL = "TOLK_STT_POOL"
ENV_MODEL = "TOLK_MODEL"
NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?$")


def settings_env(pool: str, env: Mapping[str, str]) -> dict[str, str]:
    """`env` as the pool's STT processes read their settings: `TOLK_POOL_<NAME>__<SETTING>` (NAME upper-case,
    `-` as `_`) overrides `TOLK_<SETTING>` there, so pools of one `tolk up` or compose file can be tuned apart
    (a big model's latency knobs), as the chart's per-pool `extraEnv` does on Kubernetes."""
    prefix = f"TOLK_POOL_{pool.upper().replace('-', '_')}__"
    own = {"TOLK_" + k[len(prefix):]: v for k, v in env.items() if k.startswith(prefix) and len(k) > len(prefix)}
    return {**env, **own}


def durable(kind: str, pool: str) -> str:
    """The pool's durable consumer for `kind` (final | partial): `stt-final-en` (nats/topology.toml)."""
    return f"stt-{kind}-{pool}"


def subject(kind: str, pool: str, partition: int, session: str) -> str:
    """Where the segmenter publishes a segment: `tolk.segment.<kind>.<pool>.<partition>.<session>`."""
    return f"tolk.segment.{kind}.{pool}.{partition}.{session}"


class Pool(msgspec.Struct, frozen=True):
    name: str
    model: str
    languages: tuple[str, ...]  # ISO codes, or ("*",)

    @property
    def catch_all(self) -> bool:
        return self.languages == (ANY,)

    @property
    def spec(self) -> str:
        return f"{self.name}={self.model}:{','.join(self.languages)}"


class Pools(msgspec.Struct, frozen=True):
    """A validated pool set: unique names, each language in one pool, exactly one `*` pool."""

    pools: tuple[Pool, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pools)

    @property
    def spec(self) -> str:
        """The canonical `TOLK_STT_POOLS` string (what `tolk up` hands its children)."""
        return ";".join(p.spec for p in self.pools)

    def route(self, language: str) -> Pool:
        """The pool that transcribes `language` (an ISO code or `auto`)."""
        fallback = self.pools[0]
        for p in self.pools:
            if language in p.languages:
                return p
            if p.catch_all:
                fallback = p
        return fallback

    def get(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise SettingsError(f"{ENV_POOL}={name!r} is not a configured STT pool (pools: {', '.join(self.names)})")

    def serving(self, name: str) -> Pool:
        """The pool an STT process serves: `name` (TOLK_STT_POOL), or the only pool when it is empty."""
        if name:
            return self.get(name)
        if len(self.pools) == 1:
            return self.pools[0]
        raise SettingsError(f"several STT pools are configured ({', '.join(self.names)}): set {ENV_POOL} "
                            "(or `tolk actor stt --pool NAME`) to the one this process serves")


def parse(spec: str) -> Pools:
    """`en=tiny.en:en;multi=base:*` → Pools; a malformed spec raises SettingsError saying what is wrong."""
    pools: list[Pool] = []
    for raw in spec.split(";"):
        item = raw.strip()
        if not item:
            continue
        name, eq, rest = item.partition("=")
        model, colon, langs = rest.rpartition(":")
        name, model = name.strip(), model.strip()
        if not eq or not colon or not model:
            raise SettingsError(f"{ENV_POOLS}: {item!r} is not NAME=MODEL:LANGUAGES (e.g. multi=base:*)")
        if not NAME.match(name):
            raise SettingsError(f"{ENV_POOLS}: pool name {name!r}: 1-16 of a-z, 0-9 and '-', starting and ending "
                                "with a letter or digit")
        languages = tuple(dict.fromkeys(x.strip().lower() for x in langs.split(",") if x.strip()))
        if not languages:
            raise SettingsError(f"{ENV_POOLS}: pool {name!r} lists no languages (codes, or * for all others)")
        if ANY in languages and len(languages) > 1:
            raise SettingsError(f"{ENV_POOLS}: pool {name!r}: '*' stands alone (it takes every language that "
                                "no other pool lists)")
        unknown = [x for x in languages if x != ANY and x not in WHISPER_LANGUAGES]
        if unknown:
            raise SettingsError(f"{ENV_POOLS}: pool {name!r}: not a Whisper language code: {', '.join(unknown)}")
        pools.append(Pool(name, model, languages))
    return _validated(pools)


def _validated(pools: list[Pool]) -> Pools:
    if not pools:
        raise SettingsError(f"{ENV_POOLS}: no pools (e.g. {DEFAULT})")
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        raise SettingsError(f"{ENV_POOLS}: pool names repeat: {', '.join(names)}")
    catch_all = [p.name for p in pools if p.catch_all]
    if len(catch_all) != 1:
        raise SettingsError(f"{ENV_POOLS}: exactly one pool must take '*' (every other language and 'auto'); "
                            f"found {len(catch_all)}")
    owner: dict[str, str] = {}
    for p in pools:
        for lang in p.languages:
            if lang in owner and lang != ANY:
                raise SettingsError(f"{ENV_POOLS}: language {lang!r} is in pools {owner[lang]!r} and {p.name!r}")
            owner[lang] = p.name
    return Pools(tuple(pools))


def load(env: Mapping[str, str] | None = None) -> Pools:
    """The pools of this deployment, from `TOLK_STT_POOLS`, else `TOLK_MODEL`, else the default."""
    source = os.environ if env is None else env
    spec = source.get(ENV_POOLS, "").strip()
    if spec:
        return parse(spec)
    model = source.get(ENV_MODEL, "").strip()
    if model:
        return Pools((Pool(SINGLE, model, (ANY,)),))
    return parse(DEFAULT)
