"""Every message that crosses NATS, defined once.

Structs are msgspec ``Struct``s encoded as plain msgpack maps (so any msgpack client, e.g. a Go
service or ``tolk tap``, can read them). Each carries ``v`` (schema version): a decoder rejects
versions it does not know instead of guessing at fields.
"""

from schemas.codec import DecodeError, decode, encode
from schemas.messages import (
    ENDPOINT_MS_RANGE,
    MAX_SPEAKERS_RANGE,
    MAX_UTTERANCE_S_RANGE,
    NO_ENDPOINT,
    SCHEMA_VERSION,
    ActorHeartbeat,
    AudioChunk,
    ChannelRecord,
    ClientResult,
    DiarizerState,
    Encoding,
    Endpoint,
    IngestLease,
    ListenerRecord,
    ResultKind,
    Segment,
    SegmenterCheckpoint,
    SegmentKind,
    SessionRecord,
    SpeakerSpan,
    SpeakerTurns,
    Transcript,
    Word,
    client_result,
    results_subject,
    stream_of,
    with_speakers,
)
from schemas.translation import TranslationCatalog, TranslationEngine, TranslationPair

__all__ = [
    "ENDPOINT_MS_RANGE",
    "MAX_SPEAKERS_RANGE",
    "MAX_UTTERANCE_S_RANGE",
    "NO_ENDPOINT",
    "SCHEMA_VERSION",
    "ActorHeartbeat",
    "AudioChunk",
    "ChannelRecord",
    "ClientResult",
    "DecodeError",
    "DiarizerState",
    "Encoding",
    "Endpoint",
    "IngestLease",
    "ListenerRecord",
    "ResultKind",
    "Segment",
    "SegmentKind",
    "SegmenterCheckpoint",
    "SessionRecord",
    "SpeakerSpan",
    "SpeakerTurns",
    "Transcript",
    "TranslationCatalog",
    "TranslationEngine",
    "TranslationPair",
    "Word",
    "client_result",
    "decode",
    "encode",
    "results_subject",
    "stream_of",
    "with_speakers",
]
