"""EasyNMT's OpusMT, reading Marian models from a local folder first (imports torch: loaded lazily)."""

from __future__ import annotations

from typing import Any

from easynmt.models.OpusMT import OpusMT

from actors.translator.opus_paths import local_path


class LocalOpusMT(OpusMT):  # type: ignore[misc]
    """Resolves `Helsinki-NLP/opus-mt-x-y` to `<local_dir>/opus-mt-x-y` when present, else the hub/cache.

    A saved EasyNMT folder can name it in `easynmt.json`: `"model_class": "actors.translator.opus_local.LocalOpusMT"`.
    """

    def __init__(self, easynmt_path: str | None = None, max_loaded_models: int = 4, local_dir: str = "") -> None:
        super().__init__(easynmt_path=easynmt_path, max_loaded_models=max_loaded_models)
        self.local_dir = local_dir

    def load_model(self, model_name: str) -> Any:
        return super().load_model(local_path(self.local_dir, model_name) or model_name)

    def save(self, output_path: str) -> dict[str, Any]:
        return {"max_loaded_models": self.max_loaded_models, "local_dir": self.local_dir}
