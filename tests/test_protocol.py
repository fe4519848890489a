"""Client protocol rules, as pure functions (the WebSocket tests cover the same codes live)."""

from __future__ import annotations

import base64
import json

import pytest

from edge.settings import EdgeSettings
from edge.transports.native.codec import (
    Audio,
    Close,
    Configure,
    ErrorCode,
    ProtocolError,
    Start,
    Stop,
    Unknown,
    check_audio,
    parse_text,
    render_result,
)
from schemas import ClientResult, Encoding, Endpoint, ResultKind, Word

MAX = 1 << 20


def err(text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_text(text, MAX)
    return info.value


def test_start_defaults_and_fields() -> None:
    msg = parse_text(json.dumps({"type": "start", "sample_rate": 44100, "encoding": "pcm_f32le",
                                 "language": "de", "session_id": "abc_1-2"}), MAX)
    assert msg == Start(44100, Encoding.PCM_F32LE, "de", "abc_1-2")
    assert parse_text('{"type":"start"}', MAX) == Start(16000, Encoding.PCM_S16LE, "auto", None)


@pytest.mark.parametrize(
    ("payload", "code", "close"),
    [
        ("nope", ErrorCode.INVALID_JSON, Close.INVALID_PAYLOAD),
        ("[1,2]", ErrorCode.INVALID_JSON, Close.INVALID_PAYLOAD),
        ('{"type": 5}', ErrorCode.INVALID_JSON, Close.INVALID_PAYLOAD),
        ('{"type":"start","sample_rate":"16000"}', ErrorCode.INVALID_START, Close.POLICY),
        ('{"type":"start","sample_rate":true}', ErrorCode.INVALID_START, Close.POLICY),
        ('{"type":"start","sample_rate":7999}', ErrorCode.UNSUPPORTED_SAMPLE_RATE, Close.UNSUPPORTED_DATA),
        ('{"type":"start","sample_rate":48001}', ErrorCode.UNSUPPORTED_SAMPLE_RATE, Close.UNSUPPORTED_DATA),
        ('{"type":"start","encoding":"opus"}', ErrorCode.UNSUPPORTED_ENCODING, Close.UNSUPPORTED_DATA),
        ('{"type":"start","language":"klingon"}', ErrorCode.UNSUPPORTED_LANGUAGE, Close.UNSUPPORTED_DATA),
        ('{"type":"start","session_id":"a.b"}', ErrorCode.INVALID_SESSION_ID, Close.POLICY),
        ('{"type":"start","session_id":"' + "x" * 65 + '"}', ErrorCode.INVALID_SESSION_ID, Close.POLICY),
        ('{"type":"audio","data":"***"}', ErrorCode.INVALID_BASE64, Close.INVALID_PAYLOAD),
        ('{"type":"audio","data":"AAA"}', ErrorCode.INVALID_BASE64, Close.INVALID_PAYLOAD),
        ('{"type":"audio"}', ErrorCode.INVALID_BASE64, Close.INVALID_PAYLOAD),
    ],
)
def test_bad_messages(payload: str, code: ErrorCode, close: Close) -> None:
    e = err(payload)
    assert e.code is code
    assert e.close is close
    body = e.to_json()
    assert body["type"] == "error" and body["code"] == code.value and body["message"]


def test_base64_audio_and_size_limit() -> None:
    pcm = b"\x01\x02" * 100
    assert parse_text(json.dumps({"type": "audio", "data": base64.b64encode(pcm).decode()}), MAX) == Audio(pcm)
    big = base64.b64encode(b"\x00" * (MAX + 2)).decode()
    assert err(json.dumps({"type": "audio", "data": big})).code is ErrorCode.FRAME_TOO_LARGE


def test_stop_and_unknown() -> None:
    assert parse_text('{"type":"stop"}', MAX) == Stop()
    assert parse_text('{"type":"set_colour"}', MAX) == Unknown("set_colour")


def test_check_audio() -> None:
    check_audio(b"\x00" * 320, Encoding.PCM_S16LE, MAX)
    check_audio(b"\x00" * 640, Encoding.PCM_F32LE, MAX)
    with pytest.raises(ProtocolError) as odd:
        check_audio(b"\x00" * 321, Encoding.PCM_S16LE, MAX)
    assert odd.value.code is ErrorCode.INVALID_FRAME and odd.value.close is Close.INVALID_PAYLOAD
    with pytest.raises(ProtocolError) as f32:
        check_audio(b"\x00" * 322, Encoding.PCM_F32LE, MAX)
    assert f32.value.code is ErrorCode.INVALID_FRAME
    with pytest.raises(ProtocolError) as big:
        check_audio(b"\x00" * (MAX + 2), Encoding.PCM_S16LE, MAX)
    assert big.value.code is ErrorCode.FRAME_TOO_LARGE and big.value.close is Close.TOO_BIG


def test_render_result() -> None:
    r = ClientResult(session_id="s", utterance_id=1, seq=4, kind=ResultKind.FINAL, text="hi there",
                     stable_text="hi there", language="en", start=0.5, end=1.5,
                     words=(Word(word="hi", start=0.5, end=0.9, probability=0.8),), speech_end_wall=100.0,
                     speech_start=0.6, endpoint=Endpoint.SILENCE)
    out = render_result(r, now=100.25)
    assert out == {
        "type": "final", "session_id": "s", "utterance_id": 1, "seq": 4, "text": "hi there",
        "stable_text": "hi there", "language": "en", "start": 0.5, "end": 1.5,
        "words": [{"word": "hi", "start": 0.5, "end": 0.9, "probability": 0.8}], "latency_ms": 250.0,
        "speech_start": 0.6, "endpoint": "silence",
    }
    end = ClientResult(session_id="s", utterance_id=1, seq=5, kind=ResultKind.END)
    assert render_result(end) == {"type": "done", "session_id": "s"}


def test_documented_defaults() -> None:
    cfg = EdgeSettings()
    assert cfg.idle_timeout_s == 30 and cfg.max_frame_bytes == 1 << 20 and cfg.port == 8080


def test_targets_on_start() -> None:
    start = parse_text(json.dumps({"type": "start", "targets": ["de", "pt-BR", "de"], "translate_partials": True}),
                       MAX)
    assert isinstance(start, Start)
    assert start.targets == ("de", "pt-BR") and start.translate_partials
    assert parse_text('{"type":"start","targets":"es"}', MAX).targets == ("es",)  # type: ignore[union-attr]
    for bad in ('{"type":"start","targets":["german"]}', '{"type":"start","targets":[1]}',
                '{"type":"start","targets":{"de":1}}',
                json.dumps({"type": "start", "targets": [f"a{c}" for c in "bcdefghijklmnopqrs"]})):
        e = err(bad)
        assert e.code is ErrorCode.INVALID_TARGETS and e.close is Close.POLICY
    assert err('{"type":"start","translate_partials":"yes"}').code is ErrorCode.INVALID_START


def test_configure_and_set_langs() -> None:
    c = parse_text('{"type":"configure","targets":["fr"],"language":"de"}', MAX)
    assert isinstance(c, Configure) and c.targets == ("fr",) and c.language == "de" and c.translate_partials is None
    legacy = parse_text('{"type":"set_langs","targets":[]}', MAX)
    assert isinstance(legacy, Configure) and legacy.targets == () and legacy.language is None
    for bad in ('{"type":"configure","targets":["xx-yy-zz"]}', '{"type":"configure","language":"klingon"}',
                '{"type":"configure","translate_partials":1}', '{"type":"configure","colour":"blue"}'):
        e = err(bad)
        assert e.code is ErrorCode.INVALID_CONFIGURE and e.close is None  # reported, session continues


def test_render_translations_only_for_this_listener() -> None:
    r = ClientResult(session_id="s", utterance_id=1, seq=3, kind=ResultKind.FINAL, text="Hello",
                     translations={"pt": "Olá", "de": "Hallo"}, translation_errors={"ja": "unsupported_pair"})
    out = render_result(r, now=0, targets=("pt", "ja"))
    assert out["translations"] == {"pt": "Olá"} and out["translation_errors"] == {"ja": "unsupported_pair"}
    assert "translations" not in render_result(r, now=0)  # asked for none: no translation fields
    partial = ClientResult(session_id="s", utterance_id=1, seq=2, kind=ResultKind.PARTIAL, text="Hel")
    assert "translations" not in render_result(partial, now=0, targets=("pt",))


def test_subscribe_after_cursor_replays_only_what_was_missed() -> None:
    from edge.core.replay import after_cursor
    from edge.transports.native.codec import Subscribe

    msg = parse_text('{"type":"subscribe","channel":"news","after":{"session_id":"ch=news=r1","seq":7}}', MAX)
    assert msg == Subscribe("news", None, False, ("ch=news=r1", 7))
    for bad in ('"x"', '{"session_id":"a"}', '{"session_id":"","seq":1}', '{"session_id":"a","seq":true}',
                '{"session_id":"a","seq":-1}', '{"session_id":"a","seq":1.5}', '[1,2]'):
        assert err('{"type":"subscribe","channel":"news","after":' + bad + "}").code is ErrorCode.INVALID_SUBSCRIBE

    def final(sid: str, seq: int) -> ClientResult:
        return ClientResult(session_id=sid, utterance_id=seq, seq=seq, kind=ResultKind.FINAL, text=f"{sid} {seq}")

    history = [final("ch=news=r1", s) for s in (3, 5, 7, 9)] + [final("ch=news=r2", s) for s in (1, 2)]
    keys = lambda rs: [(r.session_id, r.seq) for r in rs]  # noqa: E731
    assert after_cursor(history, None) == history
    assert keys(after_cursor(history, ("ch=news=r1", 7))) == [("ch=news=r1", 9), ("ch=news=r2", 1), ("ch=news=r2", 2)]
    assert after_cursor(history, ("ch=news=r2", 2)) == []
    # Older than what is kept: all of it, less its own run's finals at or before it.
    assert keys(after_cursor(history, ("ch=news=r1", 4))) == keys(history[1:])
    assert after_cursor(history, ("ch=news=r0", 99)) == history
