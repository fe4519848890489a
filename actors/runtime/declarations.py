"""Where the repository's `nats/` declarations (server.conf, topology.toml, permissions.toml) are read from.

`nats/` is not a Python package (a `nats/__init__.py` would shadow nats-py), so a wheel installs its files as
data under `<prefix>/share/tolk/nats` (pyproject `data-files`). A checkout or editable install reads the
folder in the source tree; TOLK_NATS_DIR overrides both (a mounted ConfigMap, say).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "nats"
INSTALLED = Path(sys.prefix) / "share" / "tolk" / "nats"


def nats_dir() -> Path:
    if os.environ.get("TOLK_NATS_DIR"):
        return Path(os.environ["TOLK_NATS_DIR"])
    if (SOURCE / "topology.toml").is_file():
        return SOURCE
    return INSTALLED


def nats_file(name: str) -> Path:
    return nats_dir() / name
