"""Every message that crosses NATS, defined once.

Structs are msgspec ``Struct``s encoded as plain msgpack maps (so any msgpack client, e.g. a Go
service or ``tolk tap``, can read them). Each carries ``v`` (schema version): a decoder rejects
versions it does not know instead of guessing at fields.
"""

from schemas.codec import DecodeError, decode, encode
from schemas.messages import (
    SCHEMA_VERSION,
    ActorHeartbeat,
    AudioChunk,
    ClientResult,
    Encoding,
    Endpoint,
    ListenerRecord,
    ResultKind,
    Segment,
    SegmentKind,
    SessionRecord,
    Transcript,
    Word,
)

__all__ = [
    "SCHEMA_VERSION",
    "ActorHeartbeat",
    "AudioChunk",
    "ClientResult",
    "DecodeError",
    "Encoding",
    "Endpoint",
    "ListenerRecord",
    "ResultKind",
    "Segment",
    "SegmentKind",
    "SessionRecord",
    "Transcript",
    "Word",
    "decode",
    "encode",
]
