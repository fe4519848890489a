"""Compressed audio on Tolk's own protocol (`encoding: ogg_opus | webm_opus`), decoded at the edge: real speech
made into Opus by FFmpeg (PyAV) gives the same finals as PCM through a real `tolk up`; malformed streams end
only their own session, with `invalid_audio`; and the decoders' bounds hold."""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import Iterator

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.audio.decoders import (
    MAX_ELEMENT,
    MAX_PENDING,
    AudioFormatError,
    OggOpusDecoder,
    WebmOpusDecoder,
    container_channels,
    decoder_for,
)
from loadtest.client import stream_pcm
from loadtest.compressed import opus, stream_encoded
from loadtest.speech import Clip, clips, encode_audio
from loadtest.wer import corpus_wer
from tests.conftest import Running, start_tolk, stop_tolk

WER_BOUND = 0.15


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    # Finals decoded the same way whatever the load and timing (always the full window with beam search, one
    # segment per model call, no speculative decode), so that PCM and Opus runs differ only by their audio.
    run = start_tolk(tmp_path_factory.mktemp("tolk-opus"), env={
        "TOLK_MT_DOWNLOAD": "0", "TOLK_FULL_WINDOW_BELOW": "2", "TOLK_BUSY_BATCH": "1000", "TOLK_BATCH_SIZE": "1",
        "TOLK_SPECULATE": "false"})
    yield run
    stop_tolk(run)


def clip(prefix: str = "en_jfk") -> Clip:
    return next(c for c in clips("en") if c.name.startswith(prefix))


# ---------------------------------------------------------------------- decoders alone (no server)
@pytest.mark.parametrize(("container", "encoding"), [("ogg", "ogg_opus"), ("webm", "webm_opus")])
@pytest.mark.parametrize("piece", [1, 333, 4096])
def test_decoder_any_piece_size(container: str, encoding: str, piece: int) -> None:
    """Fed in pieces of any size (one byte at a time included), the decoder yields the whole clip at 16 kHz, close
    to the original samples."""
    c = clip()
    pcm, rate = c.pcm16()
    data = opus(c, container, bitrate=32000)
    d = decoder_for(encoding)
    out = bytearray()
    for i in range(0, len(data), piece):
        out += d.feed(data[i:i + piece])
    got = np.frombuffer(bytes(out), "<i2").astype(np.float64)
    # Exactly what FFmpeg makes of the whole file (its demuxer, pre-skip and all), however it was cut up.
    with av.open(io.BytesIO(data)) as f:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        ffmpeg = np.concatenate([r.to_ndarray().reshape(-1) for frame in f.decode(audio=0)
                                 for r in resampler.resample(frame)]).astype(np.float64)
    assert len(got) >= len(ffmpeg) and np.abs(got[: len(ffmpeg)] - ffmpeg).max() <= 1, "not FFmpeg's decode"
    want = np.frombuffer(pcm, "<i2").astype(np.float64)
    assert abs(len(got) - len(want)) <= 0.05 * rate  # the encoder's padding at most
    # The same sound at the same times: loudness per 20 ms, correlated (a lossy codec keeps the envelope).
    n = min(len(got), len(want)) // 320 * 320
    env = [np.sqrt((x[:n].reshape(-1, 320) ** 2).mean(axis=1)) for x in (got, want)]
    corr = np.corrcoef(env[0], env[1])[0, 1]
    assert corr > 0.95, corr


def test_float_wav_keeps_every_sample() -> None:
    """A 32-bit float WAV of int16 audio reaches the recognizer sample for sample (rounded at the scale the
    segmenter divides by: truncating at 32767 took one step off every sample's magnitude)."""
    want = np.frombuffer(clip().pcm16()[0], "<i2")[:16000]
    data = (want.astype(np.float32) / 32768).astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)
    wav = b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt " + struct.pack(
        "<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    d = decoder_for("file")
    got = b"".join(d.feed(wav[i:i + 1000]) for i in range(0, len(wav), 1000))
    assert got == want.tobytes()


def test_every_api_mixes_channels_down_alike() -> None:
    """One channel policy for every API: a stereo WAV (Tolk's and Speechmatics' "file", Deepgram's live stream
    without `encoding`) and the same samples as raw interleaved PCM (Deepgram's `linear16&channels=2`) both
    become the rounded mean of the channels, so a speaker on either side is kept, in 16 and 24 bits alike."""
    from edge.audio.pcm import PcmDecoder

    speech = np.frombuffer(clip().pcm16()[0], "<i2")[:16000].astype(np.int32)
    left, right = speech, (-speech // 3).astype(np.int32)  # the other channel: different, quieter, inverted
    want = np.round((left + right) / 2).astype("<i2").tobytes()
    stereo = np.stack([left, right], axis=1).reshape(-1)

    def wav(bits: int) -> bytes:
        if bits == 16:
            data = stereo.astype("<i2").tobytes()
        else:  # 24-bit: the int16 value in the top two bytes
            data = b"".join(struct.pack("<i", int(v) << 8)[:3] for v in stereo)
        fmt = struct.pack("<HHIIHH", 1, 2, 16000, 16000 * 2 * bits // 8, 2 * bits // 8, bits)
        return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt " +
                struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)

    for bits in (16, 24):
        d = decoder_for("file")
        body = wav(bits)
        assert b"".join(d.feed(body[i:i + 999]) for i in range(0, len(body), 999)) == want, bits
    raw = PcmDecoder("linear16", 2)
    data = stereo.astype("<i2").tobytes()
    assert b"".join(raw.feed(data[i:i + 333]) for i in range(0, len(data), 333)) == want


def test_container_channels_however_the_header_is_cut() -> None:
    """A file's channel count (Deepgram's `multichannel=true` without `channels`) is read from its header whatever
    sizes its first messages have, one byte at a time included: undecided (None) until the header is in, then
    the count; a WAV's fmt after another chunk too; 0 where the file does not say; never undecided past the
    bound."""
    fmt = struct.pack("<HHIIHH", 1, 2, 16000, 64000, 4, 16)
    wav = (b"RIFF" + struct.pack("<I", 0) + b"WAVE" + b"LIST" + struct.pack("<I", 5) + b"tolk!\0" +
           b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 0) + bytes(64))
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 3, 0, 48000, 0, 0)
    ogg = b"OggS" + bytes([0, 2]) + bytes(20) + bytes([1, len(head)]) + head + bytes(64)
    webm = opus(clip(), "webm")[:4096]
    # `header`: how many bytes decide (the count's own bytes included: a WAV's at fmt + 10, an OpusHead's at 9).
    for data, header, want in ((wav, wav.index(b"fmt ") + 12, 2), (ogg, 28 + 10, 3),
                               (opus(clip(), "ogg")[:4096], 28 + 10, 1), (webm, 1, 0), (b"ID3\x04" + bytes(64), 1, 0)):
        for n in range(len(data)):
            assert container_channels(data[:n]) == (None if n < header else want), (want, n)
    assert container_channels(b"RIFF" + bytes(4) + b"WAVE" + b"JUNK" + struct.pack("<I", 1 << 20)
                              + bytes(MAX_PENDING)) == 0


def test_webm_resumes_after_its_header() -> None:
    """A resumed connection gets the recording's header (everything before the first Cluster) again, then the
    elements that follow where the old one broke off (the page does this after a network drop): the decoder
    takes it as one stream and yields the rest of the audio."""
    data = opus(clip(), "webm", bitrate=32000)
    cluster = b"\x1f\x43\xb6\x75"
    first = data.find(cluster)
    later = data.find(cluster, first + 1)
    assert 0 < first < later, "FFmpeg wrote one Cluster: the clip is too short for this test"
    whole = WebmOpusDecoder().feed(data)
    d = WebmOpusDecoder()
    tail = d.feed(data[:first]) + d.feed(data[later:])
    assert d.feed(data[:first]) == b""  # a header again (a second resume) is taken in its stride
    assert 0 < len(tail) < len(whole)
    rest = np.frombuffer(whole[-len(tail):], "<i2").astype(np.float64)
    got = np.frombuffer(tail, "<i2").astype(np.float64)
    n = len(got) // 320 * 320
    env = [np.sqrt((x[:n].reshape(-1, 320) ** 2).mean(axis=1)) for x in (got, rest)]
    assert np.corrcoef(env[0], env[1])[0, 1] > 0.95


def test_decoders_refuse_other_streams() -> None:
    c = clip()
    pcm, rate = c.pcm16()
    samples = np.frombuffer(pcm, "<i2")[: rate * 2]
    vorbis = encode_audio(samples, rate, "ogg", "libvorbis") if "libvorbis" in av.codecs_available else b""
    cases = [
        ("ogg_opus", b"RIFF" + bytes(200), "not an Ogg stream"),
        ("ogg_opus", opus(c, "webm")[:4000], "not an Ogg stream"),
        ("webm_opus", opus(c, "ogg")[:4000], "not a WebM stream"),
        ("webm_opus", encode_audio(samples, rate, "webm", "libvorbis") if vorbis else b"", "no Opus audio track"),
        ("ogg_opus", vorbis, "not Opus"),
    ]
    for encoding, data, message in cases:
        if not data:
            continue
        with pytest.raises(AudioFormatError, match=message):
            decoder_for(encoding).feed(data)


def test_decoders_are_bounded() -> None:
    # A WebM block claiming 1 GiB is refused at its header, not buffered.
    head = opus(clip(), "webm")[:1000]
    d = WebmOpusDecoder()
    d.feed(head[: head.index(b"\x1f\x43\xb6\x75")])  # up to the first Cluster
    with pytest.raises(AudioFormatError, match="too large"):
        cluster = b"\x1f\x43\xb6\x75\x01\xff\xff\xff\xff\xff\xff\xff"  # of unknown size, as MediaRecorder's
        d.feed(cluster + b"\xa3\x01\x00\x00\x00\x40\x00\x00\x00" + b"x" * 10)  # a 1 GiB SimpleBlock
    assert len(d.buf) < MAX_ELEMENT
    # Ogg: a page can never hold more than 64 KiB, so pending bytes stay below that whatever arrives.
    o = OggOpusDecoder()
    page = opus(clip(), "ogg")
    o.feed(page[:58000])
    assert len(o.buf) <= 65307


# ---------------------------------------------------------------------- through a real tolk up
@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.e2e
async def test_opus_in_ogg_and_webm_gives_the_finals_of_pcm(stack: Running) -> None:
    """A two-minute talk (about 350 words, so 0.02 is a handful of words) as PCM, then as Opus at 24 kbit/s (below
    the browser page's 32)."""
    c = clip("en_gb0")
    pcm, rate = c.pcm16()
    native = await stream_pcm(stack.ws, pcm, rate, pace=2.0, timeout=240)
    assert native.done and not native.errors
    wer_pcm = corpus_wer([(c.reference, native.text())])
    assert wer_pcm <= WER_BOUND
    for container, encoding in (("ogg", "ogg_opus"), ("webm", "webm_opus")):
        data = opus(c, container, bitrate=24000)
        run, wire = await stream_encoded(stack.ws, data, c.seconds, encoding, pace=2.0, targets=["pt"], timeout=240)
        assert run.done and not run.errors, (encoding, run.errors)
        assert run.close_code == 1000
        assert run.started["encoding"] == encoding and run.started["sample_rate"] == 16000
        wer = corpus_wer([(c.reference, run.text())])
        assert abs(wer - wer_pcm) <= 0.02, (encoding, wer, wer_pcm, run.text(), native.text())
        assert all(f["translations"].get("pt") for f in run.finals if f["text"])
        # A tenth of what PCM would have sent (32,000 B/s of payload at 16 kHz).
        assert wire / c.seconds < 32000 / 5, wire / c.seconds


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.e2e
async def test_malformed_stream_ends_only_its_own_session(stack: Running) -> None:
    """A session sending garbage as ogg_opus, one sending Ogg to webm_opus, and one whose Opus packets are
    damaged mid-stream run beside a healthy one: the bad ones get `invalid_audio` (1007) or have the damaged
    packets skipped; the healthy session is transcribed as if alone."""
    c = clip()
    pcm, rate = c.pcm16()
    ogg = opus(c, "ogg")
    damaged = bytearray(ogg)
    rng = np.random.default_rng(7)
    for pos in rng.integers(len(ogg) // 3, len(ogg), 40):  # flip bytes inside pages (not their headers' "OggS")
        if damaged[pos:pos + 4] != b"OggS":
            damaged[pos] ^= 0x5A
    healthy, garbage, wrong, flipped = await asyncio.gather(
        stream_pcm(stack.ws, pcm, rate, pace=2.0),
        stream_encoded(stack.ws, bytes(rng.integers(0, 256, 40000, dtype=np.uint8)), 4.0, "ogg_opus", pace=2.0),
        stream_encoded(stack.ws, ogg, c.seconds, "webm_opus", pace=2.0),
        stream_encoded(stack.ws, bytes(damaged), c.seconds, "ogg_opus", pace=2.0),
    )
    assert healthy.done and not healthy.errors
    assert corpus_wer([(c.reference, healthy.text())]) <= WER_BOUND
    for run, _ in (garbage, wrong):
        assert [e["code"] for e in run.errors] == ["invalid_audio"], run.errors
        assert run.close_code == 1007
    run, _ = flipped
    # Damaged pages either decode around the damage (the session completes) or end it with invalid_audio.
    assert run.done or [e["code"] for e in run.errors] == ["invalid_audio"], run.errors
    if run.done:
        assert run.close_code == 1000


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.e2e
async def test_unknown_encoding_still_refused(stack: Running) -> None:
    run, _ = await stream_encoded(stack.ws, b"x" * 100, 1.0, "mp3")
    assert [e["code"] for e in run.errors] == ["unsupported_encoding"]
    assert "ogg_opus" in run.errors[0]["message"] and "webm_opus" in run.errors[0]["message"]
    assert run.close_code == 1003


_HEADERS = {name: opus(clip(), name.split("_")[0], bitrate=24000)[:1500] for name in ("ogg_opus", "webm_opus")}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["ogg_opus", "webm_opus", "opus", "mulaw", "file"]), st.booleans(),
       st.lists(st.binary(max_size=700), max_size=8))
def test_any_bytes_are_decoded_or_refused(encoding: str, real_head: bool, pieces: list[bytes]) -> None:
    """Whatever arrives (garbage after a real header included), a decoder returns PCM or raises AudioFormatError:
    nothing else escapes to the session, and what it returns is whole 16-bit samples."""
    d = decoder_for(encoding)
    head = _HEADERS.get(encoding, b"") if real_head else b""
    try:
        for piece in [head, *pieces]:
            assert len(d.feed(piece)) % 2 == 0
    except AudioFormatError:
        pass
