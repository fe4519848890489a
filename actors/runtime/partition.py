"""Session → partition mapping shared by the edge (publisher) and partitioned consumers."""

from __future__ import annotations

import re
import zlib

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def partition_for(session_id: str, partitions: int) -> int:
    return zlib.crc32(session_id.encode()) % partitions


def owned_partitions(partitions: int, replicas: int, index: int) -> list[int]:
    """Partitions a replica serves: stable, disjoint and covering for a fixed replica count."""
    if not 0 <= index < replicas:
        raise ValueError(f"replica index {index} outside 0..{replicas - 1}")
    return [p for p in range(partitions) if p % replicas == index]


def valid_session_id(session_id: str) -> bool:
    """Session ids become NATS subject tokens and KV keys: keep them to a safe alphabet."""
    return bool(_SESSION_ID.match(session_id))
