"""Schemas: pure encode/decode round trips; garbage and unknown versions are rejected."""

from __future__ import annotations

import msgpack
import msgspec
import pytest

from schemas import (
    SCHEMA_VERSION,
    ActorHeartbeat,
    AudioChunk,
    ClientResult,
    DecodeError,
    Encoding,
    ResultKind,
    Segment,
    SegmentKind,
    SessionRecord,
    Transcript,
    Word,
    decode,
    encode,
)

SAMPLES: list[msgspec.Struct] = [
    AudioChunk(session_id="s1", chunk_seq=3, sample_rate=48000, encoding=Encoding.PCM_F32LE, language="auto",
               data=b"\x00\x00\x80?", received_at=1700000000.25, end=False),
    Segment(session_id="s1", utterance_id=2, seq=7, final_index=2, kind=SegmentKind.FINAL, audio=b"\x01\x00" * 8,
            start=1.5, end=3.25, language="en", speech_end_wall=1700000001.0, partition=5),
    Transcript(session_id="s1", utterance_id=2, seq=7, final_index=2, kind=ResultKind.FINAL, partition=5,
               text="hello world", language="en", start=1.5, end=3.25,
               words=(Word(word="hello", start=1.5, end=2.0, probability=0.9),),
               speech_end_wall=1.0, no_speech_prob=0.01, avg_logprob=-0.2),
    Transcript(session_id="s1", utterance_id=2, seq=8, final_index=3, kind=ResultKind.END, partition=5),
    ClientResult(session_id="s1", utterance_id=1, seq=2, kind=ResultKind.PARTIAL, text="hel", stable_text=""),
    SessionRecord(session_id="s1", status="streaming", sample_rate=16000, encoding=Encoding.PCM_S16LE,
                  language="en", partition=1, created_at=1.0, updated_at=2.0, edge="e1"),
    ActorHeartbeat(actor="stt", instance="h-1", pid=42, started_at=1.0, ready=True),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: msgspec.Struct) -> None:
    assert decode(encode(msg), type(msg)) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_wire_format_is_plain_msgpack_with_version(msg: msgspec.Struct) -> None:
    plain = msgpack.unpackb(encode(msg))
    assert isinstance(plain, dict)
    assert plain["v"] == SCHEMA_VERSION
    assert set(plain) == set(msg.__struct_fields__)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", b"not msgpack at all", msgpack.packb([1, 2, 3]), msgpack.packb({"session_id": 5}),
     msgpack.packb({"v": 1}), b"\x89" + b"\xff" * 20],
)
def test_garbage_is_rejected(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(payload, AudioChunk)


def test_wrong_type_is_rejected() -> None:
    with pytest.raises(DecodeError):
        decode(encode(SAMPLES[0]), Segment)


def test_unknown_version_is_rejected() -> None:
    data = msgpack.unpackb(encode(SAMPLES[0]))
    data["v"] = SCHEMA_VERSION + 1
    with pytest.raises(DecodeError, match="version"):
        decode(msgpack.packb(data), AudioChunk)


def test_enum_values_are_validated() -> None:
    data = msgpack.unpackb(encode(SAMPLES[0]))
    data["encoding"] = "mp3"
    with pytest.raises(DecodeError):
        decode(msgpack.packb(data), AudioChunk)


def test_newer_optional_fields_are_tolerated() -> None:
    data = msgpack.unpackb(encode(SAMPLES[4]))
    data["added_in_a_later_minor"] = [1, 2]
    assert decode(msgpack.packb(data), ClientResult) == SAMPLES[4]
