"""Pure msgpack encode/decode: no I/O, so it is unit-testable and shared by every actor."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from schemas.messages import SCHEMA_VERSION

T = TypeVar("T", bound=msgspec.Struct)

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}


class DecodeError(ValueError):
    """Payload is not a valid message of the expected type (garbled, wrong type, unknown version)."""


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes, typ: type[T]) -> T:
    decoder = _decoders.get(typ)
    if decoder is None:
        decoder = _decoders[typ] = msgspec.msgpack.Decoder(typ)
    try:
        msg: T = decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"invalid {typ.__name__}: {exc}") from exc
    version = getattr(msg, "v", None)
    if version != SCHEMA_VERSION:
        raise DecodeError(f"{typ.__name__}: unsupported schema version {version!r}")
    return msg
