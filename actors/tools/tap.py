"""`tolk tap SUBJECT`: Tolk's NATS traffic as JSON lines, decoded from msgpack by subject.

The nats CLI shows payloads as raw bytes; tap knows which struct in `schemas/` travels on which subject.
Live (core NATS) by default; with `--since`, `--seq`, `--last` or `--all` it replays from the JetStream
stream that stores the subject (an ordered, ephemeral consumer: nothing is acked or changed).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import msgpack
import msgspec
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, RetentionPolicy

from actors.runtime.bus import Bus, NatsAuth
from schemas import (
    ActorHeartbeat,
    AudioChunk,
    ChannelRecord,
    ClientResult,
    DecodeError,
    IngestLease,
    ListenerRecord,
    Segment,
    SegmenterCheckpoint,
    SessionRecord,
    Transcript,
    decode,
)

# First match wins. Subjects are Tolk's (docs/architecture.md#subjects); KV entries are stored on $KV.<bucket>.<key>.
TYPES: list[tuple[re.Pattern[str], type[msgspec.Struct] | str]] = [
    (re.compile(r"^tolk\.audio\.[^.]+\.[^.]+$"), AudioChunk),
    (re.compile(r"^tolk\.segment\.(partial|final)\.[^.]+\.[^.]+\.[^.]+$"), Segment),  # <kind>.<pool>.<p>.<sid>
    (re.compile(r"^tolk\.(transcript|result)\.[^.]+\.[^.]+$"), Transcript),
    (re.compile(r"^tolk\.session\.[^.]+\.out$"), ClientResult),
    (re.compile(r"^tolk\.captions\.[^.]+$"), ClientResult),
    (re.compile(r"^tolk\.channel\.[^.]+\.audio$"), "channel_audio"),
    (re.compile(r"^\$KV\.tolk_sessions\."), SessionRecord),
    (re.compile(r"^\$KV\.tolk_actors\."), ActorHeartbeat),
    (re.compile(r"^\$KV\.tolk_listeners\."), ListenerRecord),
    (re.compile(r"^\$KV\.tolk_channels\."), ChannelRecord),
    (re.compile(r"^\$KV\.tolk_ingest\."), IngestLease),
    (re.compile(r"^\$KV\.tolk_fanout\."), "text"),
    (re.compile(r"^\$KV\.tolk_segmenter\."), SegmenterCheckpoint),
]


def _plain(value: Any, with_bytes: bool) -> Any:
    """JSON-ready: audio and other bytes become their size (or base64 with `with_bytes`)."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return {"base64": base64.b64encode(raw).decode()} if with_bytes else {"bytes": len(raw)}
    if isinstance(value, dict):
        return {str(k): _plain(v, with_bytes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, with_bytes) for v in value]
    return value


def describe(subject: str, data: bytes, with_bytes: bool = False) -> dict[str, Any]:
    """What a message on `subject` says: `{"type": ..., "data": ...}`, or `{"error": ...}` if it does not decode
    as the struct its subject carries (a bad producer is exactly what a tap is for)."""
    if not data:
        return {"type": "empty", "data": None}  # KV deletes and purges
    for pattern, typ in TYPES:
        if not pattern.search(subject):
            continue
        if typ == "text":
            return {"type": "text", "data": data.decode("utf-8", "replace")}
        if typ == "channel_audio":
            if len(data) < 8:
                return {"type": "channel_audio", "error": f"frame of {len(data)} bytes has no stream time"}
            (at,) = struct.unpack("<d", data[:8])
            return {"type": "channel_audio", "data": {"stream_time": round(at, 3),
                                                      "mp3": _plain(data[8:], with_bytes)}}
        assert isinstance(typ, type)
        try:
            msg = decode(data, typ)
        except DecodeError as exc:
            return {"type": typ.__name__, "error": str(exc), "raw": _generic(data, with_bytes)}
        return {"type": typ.__name__, "data": _plain(msgspec.to_builtins(msg, builtin_types=(bytes,)), with_bytes)}
    return {"type": "unknown", "data": _generic(data, with_bytes)}


def _generic(data: bytes, with_bytes: bool) -> Any:
    try:
        return _plain(msgpack.unpackb(data, raw=False, strict_map_key=False), with_bytes)
    except Exception:
        try:
            return json.loads(data)
        except ValueError:
            return _plain(data, with_bytes)


def parse_since(text: str, now: float | None = None) -> datetime:
    """`90s`, `10m`, `2h`, `1d` ago, or an ISO 8601 time."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        base = datetime.fromtimestamp(time.time() if now is None else now, UTC)
        return base - timedelta(seconds=float(m.group(1)) * unit)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since takes 30s, 10m, 2h, 1d or an ISO time, not {text!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def line(msg: Msg, with_bytes: bool) -> str:
    out: dict[str, Any] = {"subject": msg.subject}
    try:
        meta = msg.metadata  # JetStream delivery: stream sequence and the time it was stored
        out["stream"] = meta.stream
        out["seq"] = meta.sequence.stream
        out["time"] = meta.timestamp.isoformat() if isinstance(meta.timestamp, datetime) else meta.timestamp
    except Exception:  # a core NATS message has no metadata
        out["time"] = datetime.now(UTC).isoformat()
    origin = (msg.headers or {}).get("Tolk-Subject")  # a dead letter decodes as what it was
    if origin:
        out["origin"] = {k[5:].lower(): v for k, v in (msg.headers or {}).items() if k.startswith("Tolk-")}
    out.update(describe(origin or msg.subject, msg.data, with_bytes))
    return json.dumps(out, ensure_ascii=False, default=str)


async def tap(url: str, subject: str, *, since: str | None = None, seq: int | None = None, last: bool = False,
              all_: bool = False, count: int = 0, idle_exit_s: float = 0.0, with_bytes: bool = False,
              out: TextIO = sys.stdout, stop: asyncio.Event | None = None, auth: NatsAuth | None = None) -> int:
    """Print messages until `count` (0: forever), `idle_exit_s` of silence, or `stop`; returns how many."""
    bus = await Bus.connect(url, name="tolk-tap", first_attempt_s=5, auth=auth)
    done = stop or asyncio.Event()
    seen = 0
    last_at = time.monotonic()

    async def on_msg(msg: Msg) -> None:
        nonlocal seen, last_at
        if done.is_set():
            return
        out.write(line(msg, with_bytes) + "\n")
        out.flush()
        seen += 1
        last_at = time.monotonic()
        if count and seen >= count:
            done.set()

    try:
        if since or seq or last or all_:
            stream = await bus.js.find_stream_name_by_subject(subject)
            info = await bus.js.stream_info(stream)
            if info.config.retention == RetentionPolicy.WORK_QUEUE:
                raise ValueError(f"{stream} is a work queue (a message is deleted once processed), so it cannot "
                                 "be replayed: tap it live, without --since/--seq/--last/--all")
            policy, config = _replay_policy(since, seq, last)
            await bus.js.subscribe(subject, stream=stream, cb=on_msg, ordered_consumer=True, deliver_policy=policy,
                                   config=config)
        else:
            await bus.nc.subscribe(subject, cb=on_msg)
        await _wait(done, idle_exit_s, lambda: last_at)
    finally:
        await bus.close()
    return seen


def _replay_policy(since: str | None, seq: int | None, last: bool) -> tuple[DeliverPolicy, ConsumerConfig]:
    if seq:
        return DeliverPolicy.BY_START_SEQUENCE, ConsumerConfig(opt_start_seq=seq)
    if since:
        return DeliverPolicy.BY_START_TIME, ConsumerConfig(opt_start_time=parse_since(since))
    if last:
        return DeliverPolicy.LAST_PER_SUBJECT, ConsumerConfig()
    return DeliverPolicy.ALL, ConsumerConfig()


async def _wait(done: asyncio.Event, idle_exit_s: float, last_at: Callable[[], float]) -> None:
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), 0.2)
        except TimeoutError:
            if idle_exit_s and time.monotonic() - last_at() >= idle_exit_s:
                return
