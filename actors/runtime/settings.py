"""Typed settings with environment overrides: `TOLK_<FIELD>` (upper-case) overrides a field.

One loader for every actor so configuration is documented once (docs/configuration.md#configuration).
"""

from __future__ import annotations

import os
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

ENV_PREFIX = "TOLK_"


class SettingsError(ValueError):
    """An environment override does not parse as the field's type."""


class ConfigError(RuntimeError):
    """A setting names something unusable (e.g. a model that is not there). A restart cannot fix it, so
    `serve` logs the message as one line and exits 2 instead of printing a traceback."""


def load(cls: type[T], env: dict[str, str] | None = None, **overrides: Any) -> T:
    """Build `cls` (a dataclass) from defaults, then `TOLK_*` env vars, then explicit overrides."""
    if not (isinstance(cls, type) and is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    source = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(cls):
        key = ENV_PREFIX + f.name.upper()
        if key in source:
            values[f.name] = source[key]
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid setting: {exc}") from exc
