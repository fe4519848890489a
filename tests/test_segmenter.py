"""Segmenter state machine on real recordings: endpoints, partials, caps, silence, resampling."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import soxr

from actors.segmenter.audio import Resampler, decode_pcm, to_int16_bytes
from actors.segmenter.segmenter import Cut, SegmenterConfig, State, UtteranceSegmenter
from actors.segmenter.vad import DualVad, SileroModel, Vote, WebRtcStream
from loadtest.speech import Clip, clips
from schemas import Encoding


@pytest.fixture(scope="module")
def silero() -> SileroModel:
    return SileroModel()


def clip(prefix: str) -> Clip:
    return next(c for c in clips() if c.name.startswith(prefix))


def samples(c: Clip) -> np.ndarray:
    pcm, rate = c.pcm16()
    assert rate == 16000
    return decode_pcm(pcm, Encoding.PCM_S16LE)


def run(silero: SileroModel, audio: np.ndarray, cfg: SegmenterConfig | None = None,
        vote: Vote = Vote.AND, chunk: int = 1600,
        vad: Callable[[Vote], DualVad] | None = None) -> tuple[list[Cut], UtteranceSegmenter]:
    seg = UtteranceSegmenter(vad(vote) if vad else DualVad(WebRtcStream(2), silero.stream(0.5), vote), cfg)
    cuts: list[Cut] = []
    for i in range(0, len(audio), chunk):
        cuts += seg.push(audio[i : i + chunk], wall=i / 16000)
    cuts += seg.flush(wall=len(audio) / 16000)
    return cuts, seg


def finals(cuts: list[Cut]) -> list[Cut]:
    return [c for c in cuts if c.final]


def partials(cuts: list[Cut]) -> list[Cut]:
    return [c for c in cuts if not c.final and not c.speculative]


def test_jfk_endpoints_at_the_pauses(silero: SileroModel) -> None:
    cuts, seg = run(silero, samples(clip("en_jfk")))
    f = finals(cuts)
    # "And so, my fellow Americans | ask not | what your country can do for you | ask what you can do..."
    assert len(f) == 4
    ends = [round(c.end, 1) for c in f]
    assert ends[0] == pytest.approx(2.2, abs=0.4) and ends[1] == pytest.approx(4.4, abs=0.4)
    assert [c.utterance_id for c in f] == [1, 2, 3, 4]
    assert [c.endpoint.value for c in f] == ["silence", "silence", "silence", "stop"]
    assert all(c.start <= c.speech_start < c.end for c in cuts)
    assert all(b.start >= a.end for a, b in itertools.pairwise(f))
    assert seg.state is State.INACTIVE


def test_partials_precede_finals_and_grow(silero: SileroModel) -> None:
    cuts, _ = run(silero, samples(clip("en_librispeech_2412")))
    for utt in {c.utterance_id for c in cuts}:
        mine = [c for c in cuts if c.utterance_id == utt]
        assert mine[-1].final and not any(c.final for c in mine[:-1])
        lengths = [len(c.audio) for c in mine[:-1]]
        assert lengths == sorted(lengths)
        if mine[-1].end - mine[-1].start > 1.5:
            assert len(mine) >= 2, f"utterance {utt} of {mine[-1].end - mine[-1].start:.1f}s had no partial"


def by_utterance(cuts: list[Cut]) -> dict[int, list[Cut]]:
    out: dict[int, list[Cut]] = {}
    for c in cuts:
        out.setdefault(c.utterance_id, []).append(c)
    return out


def test_partial_cadence(silero: SileroModel) -> None:
    cfg = SegmenterConfig(partial_every_ms=700, partial_growth=0)
    cuts, _ = run(silero, samples(clip("en_librispeech_2412")), cfg)
    gaps = [b.end - a.end for ps in by_utterance(partials(cuts)).values() for a, b in itertools.pairwise(ps)]
    assert gaps and all(0.6 <= g <= 1.5 for g in gaps)


def test_partials_space_out_as_the_utterance_grows(silero: SileroModel) -> None:
    """Each partial re-decodes its whole utterance: past 0.7 s / 0.15 ≈ 4.7 s the cadence follows the length."""
    audio = samples(clip("en_gb0"))[: 16000 * 40]
    long_utterances = {"endpoint_ms": 1500, "soft_max_s": 0}
    fixed, _ = run(silero, audio, SegmenterConfig(partial_growth=0, **long_utterances))  # type: ignore[arg-type]
    cuts, _ = run(silero, audio, SegmenterConfig(partial_growth=0.15, **long_utterances))  # type: ignore[arg-type]
    assert [c.end for c in finals(cuts)] == [c.end for c in finals(fixed)]  # only partials change
    pairs = [(a, b) for ps in by_utterance(partials(cuts)).values() for a, b in itertools.pairwise(ps)]
    for a, b in pairs:
        assert b.end - a.end >= max(0.7, 0.15 * (b.end - b.start)) - 0.05, (a.end, b.end, b.start)
    assert any(b.end - a.end > 1.2 for a, b in pairs), "no utterance long enough to space its partials out"
    assert len(partials(cuts)) < 0.8 * len(partials(fixed))


def test_first_partial_comes_early(silero: SileroModel) -> None:
    cuts, _ = run(silero, samples(clip("en_librispeech_2412")), SegmenterConfig(first_partial_ms=400))
    first = partials(cuts)[0]
    later = [c for c in partials(cuts) if c.utterance_id == first.utterance_id][1]
    assert later.end - first.end == pytest.approx(0.7, abs=0.1)
    assert first.end - first.start <= 1.0 + 0.4 + 0.1  # pre-roll + first window


def test_speculative_cut_carries_the_final_audio_ahead(silero: SileroModel) -> None:
    """Once the tail pad of silence has passed, the would-be final's samples go ahead (STT decodes them while
    the endpoint silence runs out); a pause-ended final then has exactly those samples."""
    cuts, _ = run(silero, samples(clip("en_jfk")))
    for f in finals(cuts):
        early = [c for c in cuts if c.speculative and c.utterance_id == f.utterance_id]
        if f.endpoint.value == "silence":
            assert early, f"utterance {f.utterance_id} had no speculative cut"
            assert np.array_equal(early[-1].audio, f.audio) and early[-1].end == f.end
            position = {id(c): i for i, c in enumerate(cuts)}
            assert position[id(early[-1])] < position[id(f)]
            assert f.speech_end_wall == early[-1].speech_end_wall
    off, _ = run(silero, samples(clip("en_jfk")), SegmenterConfig(speculate=False))
    assert not any(c.speculative for c in off)
    assert [len(c.audio) for c in finals(off)] == [len(c.audio) for c in finals(cuts)]


def test_stop_keeps_every_sample(silero: SileroModel) -> None:
    """A word right before `stop` must not be cut off by the VAD's view of where speech ended."""
    audio = samples(clip("en_jfk"))
    cut_at = int(16000 * 10.6)  # inside the last words
    cuts, _ = run(silero, audio[:cut_at])
    last = finals(cuts)[-1]
    assert last.endpoint.value == "stop"
    assert last.start * 16000 + len(last.audio) == pytest.approx(cut_at, abs=512)


def test_silence_and_noise_yield_nothing(silero: SileroModel) -> None:
    rng = np.random.default_rng(1)
    for audio in (np.zeros(16000 * 5, np.float32),
                  (rng.standard_normal(16000 * 5) * 0.05).astype(np.float32),
                  (rng.standard_normal(16000 * 5) * 0.002).astype(np.float32)):
        cuts, _ = run(silero, audio)
        assert cuts == []


def test_quietly_recorded_speech_is_found(silero: SileroModel) -> None:
    c = clip("en_fleurs_004")  # peak level ~ -50 dBFS
    f = finals(run(silero, samples(c))[0])
    assert f and f[0].end - f[0].start > 0.6 * c.seconds


def test_speech_played_far_quieter_is_found_alike(silero: SileroModel) -> None:
    """Both VADs hear the audio through the slow gain (TOLK_VAD_GAIN): speech peaking at -60 dBFS (a distant or
    quietly set microphone) is found as at its recorded level. Unraised, the VADs hear about half of it."""
    from loadtest.speech import at_peak

    dbfs = -60.0
    cs = [clip(p) for p in ("en_jfk", "en_fleurs_001", "de_fleurs_001", "pt_fleurs_004")]

    def covered(audio: np.ndarray, gain: bool) -> float:
        seg = UtteranceSegmenter(DualVad(WebRtcStream(2), silero.stream(0.5), Vote.AND, gain))
        cuts = []
        for i in range(0, len(audio), 1600):
            cuts += seg.push(audio[i : i + 1600], wall=i / 16000)
        cuts += seg.flush(wall=len(audio) / 16000)
        return sum(c.end - c.speech_start for c in finals(cuts))

    recorded = raised = unraised = 0.0
    for c in cs:
        pcm, _ = c.pcm16()
        quiet = np.frombuffer(at_peak(pcm, dbfs), "<i2").astype(np.float32) / 32768
        recorded += covered(samples(c), True)
        raised += covered(quiet, True)
        unraised += covered(quiet, False)
    assert raised > 0.9 * recorded, (recorded, raised)
    assert unraised < 0.6 * recorded, (recorded, unraised)


def test_quiet_speaker_after_a_loud_one_is_found(silero: SileroModel) -> None:
    """Silero's recurrent state remembers loud audio; a pause must reset it (regression)."""
    loud, quiet = samples(clip("en_fleurs_001")), samples(clip("en_fleurs_002"))
    assert np.abs(loud).max() > 40 * np.abs(quiet).max()
    audio = np.concatenate([loud, np.zeros(16000, np.float32), quiet])
    offset = (len(loud) + 16000) / 16000
    f = [c for c in finals(run(silero, audio)[0]) if c.end > offset]
    covered = sum(c.end - max(c.start, offset) for c in f)
    assert covered > 0.8 * len(quiet) / 16000


def test_quiet_speaker_right_after_a_loud_one_is_found_from_the_start(silero: SileroModel) -> None:
    """The same two speakers with only 150 ms between them (pauses squeezed out, as a broadcast runs them): the
    VAD's reset comes a second into the quiet speaker, who is then found from their first words, not from
    where the fresh state first heard them (regression: the first 1.3 s, four words, were lost)."""
    from loadtest.speech import squeeze_pauses

    loud, quiet = (squeeze_pauses(samples(clip(p))) for p in ("en_fleurs_001", "en_fleurs_002"))
    audio = np.concatenate([loud, np.zeros(2400, np.float32), quiet])
    offset = (len(loud) + 2400) / 16000
    f = [c for c in finals(run(silero, audio)[0]) if c.end > offset]
    assert f and f[0].start <= offset + 0.1, [(c.start, c.end) for c in f]
    covered = sum(c.end - max(c.start, offset) for c in f)
    assert covered > 0.9 * len(quiet) / 16000


def test_long_speech_is_capped_at_the_quietest_point(silero: SileroModel) -> None:
    audio = samples(clip("en_gb0_bush"))[: 16000 * 60]
    cfg = SegmenterConfig(max_utterance_s=6.0, endpoint_ms=2000)
    cuts = run(silero, audio, cfg)[0]
    f = finals(cuts)
    assert len(f) >= 8
    # Each cap cut re-shows the remainder at once as the next utterance's partial.
    for i, c in enumerate(cuts[:-1]):
        if c.final and c.end - c.start >= 5.0:
            nxt = cuts[i + 1]
            assert not nxt.final and nxt.utterance_id == c.utterance_id + 1 and nxt.start == c.end
            assert c.endpoint.value == "max_duration"
    assert all(c.end - c.start <= 6.0 + 1e-6 for c in f)
    # Cuts land in low-energy spots: quieter than the utterance around them.
    for c in f[:-1]:
        tail = c.audio[-1600:]
        assert np.sqrt(np.mean(tail**2)) < np.sqrt(np.mean(c.audio**2))


def test_endpoint_silence_is_configurable(silero: SileroModel) -> None:
    audio = samples(clip("en_jfk"))
    short = finals(run(silero, audio, SegmenterConfig(endpoint_ms=300))[0])
    long = finals(run(silero, audio, SegmenterConfig(endpoint_ms=1500))[0])
    assert len(short) > len(long) >= 1


def test_chunk_size_does_not_change_the_result(silero: SileroModel) -> None:
    audio = samples(clip("en_jfk"))
    a = [(c.start, c.end) for c in finals(run(silero, audio, chunk=320)[0])]
    b = [(c.start, c.end) for c in finals(run(silero, audio, chunk=16000)[0])]
    assert a == b


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_input_segments_alike(silero: SileroModel, rate: int) -> None:
    audio16 = samples(clip("en_jfk"))
    native = soxr.resample(audio16, 16000, rate).astype(np.float32)
    res = Resampler(rate)
    step = rate // 10
    out = np.concatenate([res.push(native[i : i + step]) for i in range(0, len(native), step)] + [res.push(
        np.zeros(0, np.float32), last=True)])
    assert abs(len(out) - len(audio16)) < 320
    f = finals(run(silero, out)[0])
    assert len(f) == 4


def test_f32_decoding_is_clipped_and_nan_safe() -> None:
    raw = np.array([0.5, np.nan, 2.0, -3.0], dtype="<f4").tobytes()
    assert decode_pcm(raw, Encoding.PCM_F32LE).tolist() == [0.5, 0.0, 1.0, -1.0]


def test_int16_audio_reaches_stt_sample_for_sample() -> None:
    """The segments carry int16: every value the client sent comes back unchanged (truncating at 32767 took one
    step off each sample's magnitude, and Whisper read the dev set's clips worse for it)."""
    sent = np.arange(-32768, 32768, dtype="<i2")
    assert to_int16_bytes(decode_pcm(sent.tobytes(), Encoding.PCM_S16LE)) == sent.tobytes()
    assert np.frombuffer(to_int16_bytes(np.array([1.5, -1.5, 0.49 / 32768], np.float32)), "<i2").tolist() == [
        32767, -32768, 0]


# ---------------------------------------------------------------------------------------- per-session endpointing
def run_session(silero: SileroModel, audio: np.ndarray, endpoint_ms: int = 0, max_utterance_s: float = 0.0,
                cfg: SegmenterConfig | None = None, chunk: int = 512) -> list[tuple[float, Cut]]:
    """As the actor runs a session: every chunk carries the session's endpointing. Each cut with the stream
    time it came out at."""
    seg = UtteranceSegmenter(DualVad(WebRtcStream(2), silero.stream(0.5), Vote.AND), cfg)
    out: list[tuple[float, Cut]] = []
    for i in range(0, len(audio), chunk):
        seg.endpointing(endpoint_ms, max_utterance_s)
        out += [((i + chunk) / 16000, c) for c in seg.push(audio[i : i + chunk], wall=i / 16000)]
    out += [(len(audio) / 16000, c) for c in seg.flush(wall=len(audio) / 16000)]
    return out


def test_session_endpoint_is_the_config_endpoint(silero: SileroModel) -> None:
    """A session's endpoint_ms segments exactly as the server-wide setting would."""
    audio = samples(clip("en_jfk"))
    for ms in (300, 1500):
        mine = [(c.start, c.end, c.endpoint) for _, c in run_session(silero, audio, ms) if c.final]
        server = [(c.start, c.end, c.endpoint) for c in finals(run(silero, audio, SegmenterConfig(endpoint_ms=ms),
                                                                   chunk=512)[0])]
        assert mine == server


def test_a_short_session_endpoint_makes_more_shorter_finals(silero: SileroModel) -> None:
    """300 ms vs 1500 ms on the same speech: more, shorter finals, and none before its pause has run out."""
    audio = samples(clip("en_librispeech_2412"))
    short, long = ([(at, c) for at, c in run_session(silero, audio, ms) if c.final] for ms in (300, 1500))
    assert len(short) > len(long) >= 1
    assert np.mean([c.end - c.start for _, c in short]) < np.mean([c.end - c.start for _, c in long])
    for ms, fs in ((300, short), (1500, long)):
        for at, c in fs:
            if c.endpoint.value == "silence" and c.end - c.speech_start < SegmenterConfig().shrink_after_s:
                assert at - c.end >= ms / 1000 - 0.033, (ms, c.end, at)  # within a frame


def test_an_endpoint_change_applies_from_the_next_utterance(silero: SileroModel) -> None:
    """The open utterance keeps the thresholds it started with (and the speculative cut sent under them)."""
    audio = samples(clip("en_jfk"))
    seg = UtteranceSegmenter(DualVad(WebRtcStream(2), silero.stream(0.5), Vote.AND))
    cuts: list[Cut] = []
    for i in range(0, len(audio), 512):
        if seg.is_open and seg.utterance_id == 1:
            seg.endpointing(1500)  # asked for during the first utterance
        cuts += seg.push(audio[i : i + 512], wall=i / 16000)
    cuts += seg.flush(wall=len(audio) / 16000)
    default = finals(run(silero, audio, chunk=512)[0])
    assert finals(cuts)[0].end == default[0].end  # 500 ms still ended the first utterance
    assert len(finals(cuts)) < len(default)  # 1500 ms the rest: JFK's pauses no longer end them


def test_no_endpoint_ends_utterances_only_at_the_cap_flush_or_stop(silero: SileroModel) -> None:
    """Deepgram's endpointing=false: pauses end nothing; the session's max_utterance_s cuts (at a pause when
    the cap falls in one, never as a final of silence), a flush ends one at once, stop the last."""
    speech = samples(clip("en_jfk"))
    audio = np.concatenate([speech, np.zeros(16000 * 20, np.float32), speech])
    out = run_session(silero, audio, endpoint_ms=-1, max_utterance_s=6.0)
    f = [c for _, c in out if c.final]
    assert not any(c.speculative for _, c in out)
    assert {c.endpoint.value for c in f} <= {"max_duration", "stop"} and f[-1].endpoint.value == "stop"
    assert all(c.end - c.start <= 6.0 + 1e-6 for c in f)
    gap = (len(speech) / 16000 + 0.5, len(speech) / 16000 + 19.0)
    assert not any(gap[0] < c.speech_start < gap[1] for c in f), "a final of the silence"
    first_cap = next(c for c in f if c.endpoint.value == "max_duration")
    assert first_cap.end - first_cap.speech_start >= 4.0  # a 500 ms endpoint would have ended it at 2.2 s

    seg = UtteranceSegmenter(DualVad(WebRtcStream(2), silero.stream(0.5), Vote.AND))
    seg.endpointing(-1, 6.0)
    cuts = seg.push(speech[: 16000 * 3], wall=0.0) + seg.force_end()
    assert [c.endpoint.value for c in finals(cuts)] == ["flush"]


def test_session_max_utterance_caps_long_speech(silero: SileroModel) -> None:
    audio = samples(clip("en_gb0_bush"))[: 16000 * 40]
    f = [c for _, c in run_session(silero, audio, endpoint_ms=2000, max_utterance_s=4.0, chunk=1600) if c.final]
    assert len(f) >= 8 and all(c.end - c.start <= 4.0 + 1e-6 for c in f)


def _unheard_speech_s(silero: SileroModel, audio: np.ndarray, cuts: list[Cut], sure: float = 0.95) -> float:
    """Seconds Silero (through the same peak gain) is `sure` are speech that no final's audio covers."""
    from actors.segmenter.vad import FRAME, PeakGain

    stream, gain, spans, out = silero.stream(0.5), PeakGain(), [(c.start, c.end) for c in finals(cuts)], 0.0
    for i in range(0, len(audio) - FRAME + 1, FRAME):
        stream.speech(gain(audio[i : i + FRAME]), False)
        t = (i + FRAME / 2) / 16000
        if stream.last_probability >= sure and not any(a <= t <= b for a, b in spans):
            out += FRAME / 16000
    return out


def test_a_hoarse_voice_webrtcvad_misses_is_still_in_a_final(silero: SileroModel) -> None:
    # A speaker with a cold: webrtcvad hears nothing in a breathy phrase Silero is 0.95+ sure of. Under the
    # `and` vote alone that phrase fell between two finals, unread; Silero's certainty now carries it.
    audio = samples(clip("en_spontaneous_cold"))
    vetoed = run(silero, audio, vad=lambda v: DualVad(WebRtcStream(2), silero.stream(0.5), v, sure=2.0))[0]
    assert _unheard_speech_s(silero, audio, vetoed) > 0.8
    assert _unheard_speech_s(silero, audio, run(silero, audio)[0]) < 0.2
