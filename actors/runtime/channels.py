"""Broadcast channels: names, configuration, and the identifiers their pipelines use.

A channel `news` is the stream `ch=news`: its listeners are KV records under that stream, its results go
to `tolk.session.ch=news.out`, its last finals to `tolk.captions.ch=news`, its relayed audio to
`tolk.channel.news.audio`. Each time ingest starts the channel's pipeline it is a new session
`ch=news=<run>`. `=` never appears in a client's session id, so no client can speak into a channel.

Configuration (read by ingest, published to KV `tolk_channels` for edges): a TOML or JSON file named by
`TOLK_CHANNELS_FILE`, or JSON in `TOLK_CHANNELS`::

    [[channels]]
    name = "news"                       # a-z 0-9 _ -, at most 32
    url = "https://radio.example/news.mp3"   # anything PyAV opens: HTTP/Icecast, HLS (.m3u8), a file
    language = "en"                     # or "auto"
    targets = ["de", "pt"]              # default targets for listeners that name none
    title = "News radio"
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import uuid
from pathlib import Path

import msgspec

from schemas import ChannelRecord

BUCKET = "tolk_channels"
LEASES = "tolk_ingest"
_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")


class ChannelConfigError(ValueError):
    pass


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def stream_id(name: str) -> str:
    return f"ch={name}"


def channel_of(stream: str) -> str | None:
    return stream[3:] if stream.startswith("ch=") else None


def new_session_id(name: str) -> str:
    return f"ch={name}={uuid.uuid4().hex[:8]}"


def audio_subject(name: str) -> str:
    return f"tolk.channel.{name}.audio"


def captions_subject(stream: str) -> str:
    return f"tolk.captions.{stream}"


def parse(data: object) -> list[ChannelRecord]:
    items = data.get("channels", []) if isinstance(data, dict) else data
    try:
        channels = msgspec.convert(items, list[ChannelRecord])
    except msgspec.ValidationError as exc:
        raise ChannelConfigError(f"channel config: {exc}") from exc
    seen: set[str] = set()
    for c in channels:
        if not valid_name(c.name):
            raise ChannelConfigError(f"channel name {c.name!r}: use 1-32 of a-z 0-9 _ -")
        if c.name in seen:
            raise ChannelConfigError(f"channel {c.name!r} configured twice")
        if not c.url:
            raise ChannelConfigError(f"channel {c.name!r} has no url")
        seen.add(c.name)
    return channels


def load(file: str = "", env_json: str = "") -> list[ChannelRecord]:
    """Channels from `file` (TOML or JSON) or `env_json`; none configured is an empty list."""
    file = file or os.environ.get("TOLK_CHANNELS_FILE", "")
    env_json = env_json or os.environ.get("TOLK_CHANNELS", "")
    if file:
        text = Path(file).read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text) if not file.endswith(".json") else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ChannelConfigError(f"{file}: {exc}") from exc
        return parse(data)
    if env_json:
        try:
            return parse(json.loads(env_json))
        except json.JSONDecodeError as exc:
            raise ChannelConfigError(f"TOLK_CHANNELS: {exc}") from exc
    return []
