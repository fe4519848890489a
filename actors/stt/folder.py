"""What a CTranslate2 Whisper folder must hold, and the error for a model that cannot be had.

Shared by the resolver (`actors.stt.models`) and the downloader (`actors.stt.hub`), so neither imports the other
for them.
"""

from __future__ import annotations

from actors.runtime.settings import ConfigError

REQUIRED = ("model.bin", "config.json", "tokenizer.json")


class ModelError(ConfigError):
    """The requested model cannot be found, assembled or downloaded (the message says what to provide)."""
