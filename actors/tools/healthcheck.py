"""The container image's HEALTHCHECK: /healthz of whatever runs in the container.

The edge answers on its HTTP port (TOLK_PORT), every other actor on its metrics port (TOLK_METRICS_PORT), and
`tolk up` puts the edge on TOLK_PORT: healthy when either answers 200. Standard library only, so a check
costs a Python start-up and nothing else.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def healthy(ports: list[str], timeout_s: float = 3.0) -> bool:
    for port in ports:
        if not port.isdigit() or int(port) <= 0:
            continue
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout_s) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            continue
    return False


def main() -> int:
    ports = [os.environ.get("TOLK_PORT", "8080"), os.environ.get("TOLK_METRICS_PORT", "9100")]
    return 0 if healthy(ports) else 1


if __name__ == "__main__":
    sys.exit(main())
