"""Speechmatics realtime, at `/v2` and `/v2/<language>`: what `speechmatics.client.WebsocketClient` speaks.

A `SocketSession` (edge/transports/socket.py): the same admission, KV record, pipeline, results subscription
and clean-up as every API; only the messages differ. `StartRecognition` becomes a `start`, binary `AddAudio` is
audio (acknowledged with `AudioAdded`), `EndOfStream` is `stop`; results go out as `AddPartialTranscript` /
`AddTranscript` / `AddPartialTranslation` / `AddTranslation` and `EndOfTranscript`, errors as Speechmatics'
`{"message":"Error","type":…,"reason":…}` then a close. The API key arrives as `Authorization: Bearer`, which
is Tolk's own token header (edge/http/auth.py). docs/vendors/speechmatics.md says what is supported, what is
accepted and ignored, and what is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from typing import Any

from aiohttp import web

from edge.audio.pcm import MAX_RATE, MIN_RATE
from edge.core.commands import (
    Configure,
    Start,
    check_channels,
    check_diarization,
    decode_base64,
    parse_language,
    parse_targets,
    parse_vocabulary,
)
from edge.core.errors import ErrorCode, ProtocolError
from edge.core.live import Phase, Started
from edge.core.services import Services
from edge.http import auth
from edge.transports import socket
from edge.transports.socket import SocketSession
from schemas import ENDPOINT_MS_RANGE, MAX_UTTERANCE_S_RANGE, ClientResult, Encoding, Endpoint, ResultKind

log = logging.getLogger("tolk.edge.speechmatics")

FORMAT = "2.9"
SPEAKER = "UU"  # Speechmatics' "unknown speaker": without `diarization: "speaker"` (or a final sent before its labels)
RAW_ENCODINGS = {"pcm_s16le": Encoding.PCM_S16LE, "pcm_f32le": Encoding.PCM_F32LE, "mulaw": Encoding.PCM_S16LE}
MIN_DELAY, MAX_DELAY = 0.7, 4.0  # Speechmatics' documented range for max_delay
# What a final takes to decode once its utterance is cut (STT on CPU, typical): max_delay less this is the longest
# utterance, so the utterance's first word is final about max_delay after it was said (max_utterance_for).
DECODE_S = 0.5
MAX_TRIGGER = 2.0  # ...and for end_of_utterance_silence_trigger (0 is off); Tolk's own floor is ENDPOINT_MS_RANGE's

# Speechmatics' error types and the close code that follows each (its realtime API reference).
CLOSE = {
    "invalid_message": 1003, "invalid_model": 1003, "invalid_config": 1003, "invalid_audio_type": 1003,
    "not_authorised": 4001, "not_allowed": 4003, "job_error": 4004, "data_error": 4005, "buffer_error": 4006,
    "protocol_error": 4007, "timelimit_exceeded": 4008, "quota_exceeded": 4009, "idle_timeout": 4013,
    "unknown_error": 1011,
}
# Tolk's own error codes (raised by the shared session) in Speechmatics' terms: (type, Error or Warning).
FROM_TOLK: dict[ErrorCode, str] = {
    ErrorCode.INVALID_JSON: "invalid_message",
    ErrorCode.INVALID_START: "invalid_message",
    ErrorCode.UNSUPPORTED_ENCODING: "invalid_audio_type",
    ErrorCode.UNSUPPORTED_SAMPLE_RATE: "invalid_audio_type",
    ErrorCode.UNSUPPORTED_LANGUAGE: "invalid_model",
    ErrorCode.INVALID_TARGETS: "invalid_config",
    ErrorCode.INVALID_CONFIGURE: "invalid_config",
    ErrorCode.INVALID_DIARIZATION: "invalid_config",
    ErrorCode.UNSUPPORTED_CHANNELS: "invalid_config",
    ErrorCode.SESSION_IN_USE: "protocol_error",
    ErrorCode.AUDIO_BEFORE_START: "protocol_error",
    ErrorCode.OVERLOADED: "quota_exceeded",
    ErrorCode.TOO_MANY_SESSIONS: "quota_exceeded",
    ErrorCode.SESSION_TOO_LONG: "session_timeout",  # a Warning: what was said is flushed, then the session ends
    ErrorCode.INVALID_FRAME: "data_error",
    ErrorCode.INVALID_AUDIO: "data_error",
    ErrorCode.INVALID_BASE64: "data_error",
    ErrorCode.FRAME_TOO_LARGE: "buffer_error",
    ErrorCode.IDLE_TIMEOUT: "idle_timeout",
    ErrorCode.DRAIN_TIMEOUT: "job_error",
    ErrorCode.SHUTTING_DOWN: "job_error",
    ErrorCode.INTERNAL: "unknown_error",
}

_PUNCT = re.compile(r"^(.*?)([.,!?;:…。，、？！]+)$")


class SpeechmaticsError(ProtocolError):
    """An error in Speechmatics' terms: `sm_type` and the close code Speechmatics uses for it (None: Warning)."""

    def __init__(self, sm_type: str, reason: str, code: ErrorCode = ErrorCode.INVALID_START,
                 close: int | None = -1) -> None:
        super().__init__(code, reason)
        self.sm_type = sm_type
        self._close = CLOSE.get(sm_type, 1011) if close == -1 else close

    @property
    def close(self) -> int | None:  # type: ignore[override]
        return self._close


def _translate(err: ProtocolError) -> SpeechmaticsError:
    if isinstance(err, SpeechmaticsError):
        return err
    sm_type = FROM_TOLK.get(err.code, "unknown_error")
    close: int | None = None  # where Tolk's session goes on, a Warning
    if err.close is not None:
        close = 1001 if err.code is ErrorCode.SHUTTING_DOWN else CLOSE.get(sm_type, 1011)
    return SpeechmaticsError(sm_type, err.message, err.code, close)


class SpeechmaticsSession(SocketSession):
    def __init__(self, services: Services, ws: web.WebSocketResponse, token: str = "", path_language: str = "") -> None:
        super().__init__(services, ws, token)
        self.path_language = path_language
        self.enable_partials = False
        self.max_delay: float | None = None
        self.eou_trigger = 0.0  # conversation_config.end_of_utterance_silence_trigger: EndOfUtterance after its finals
        self.seq_no = 0  # AddAudio messages received
        self.warned: set[str] = set()  # translation targets already reported as unsupported
        self.no_targets = False  # a translation_config without target_languages: warned after RecognitionStarted
        self.unserved: dict[str, str] = {}  # target → why no translator serves it: warned after RecognitionStarted
        # Channel diarization: the labels of `channel_diarization_labels`, channel i's at i (each channel its own
        # pipeline: edge/core/live.py); `channel_speakers`: mode `channel`, where the label is each word's speaker.
        self.labels: tuple[str, ...] = ()
        self.channel_speakers = False
        self.channel_seq: dict[str, int] = {}  # AddChannelAudio messages received, per channel

    # ------------------------------------------------------------------ errors
    def translate(self, err: ProtocolError) -> ProtocolError:
        return _translate(err)

    def error_body(self, err: ProtocolError) -> dict[str, Any]:
        e = _translate(err)
        return {"message": "Error" if e.close is not None else "Warning", "type": e.sm_type, "reason": e.message}

    # ------------------------------------------------------------------ client messages
    async def on_text(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpeechmaticsError("invalid_message", f"messages must be JSON: {exc}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("message"), str):
            raise SpeechmaticsError("invalid_message", 'messages must be JSON objects with a string "message"')
        await self.on_message(msg["message"], msg)

    async def on_message(self, kind: str, msg: dict[str, Any]) -> None:
        """One client message, parsed and checked once by `on_text` (a variant's extra messages go first)."""
        if kind == "StartRecognition":
            if self.phase is not Phase.AWAIT_START:
                raise SpeechmaticsError("protocol_error", "StartRecognition was already received")
            await self.begin(await self._served(self._parse_start(msg)))
        elif kind == "EndOfStream":
            if self.phase is Phase.AWAIT_START:
                raise SpeechmaticsError("protocol_error", "EndOfStream before StartRecognition")
            last = msg.get("last_seq_no")
            if isinstance(last, bool) or not isinstance(last, int) or last < 0:
                raise SpeechmaticsError("invalid_message", "EndOfStream needs last_seq_no (an integer >= 0)")
            if last != self.seq_no:
                log.info("%s: EndOfStream last_seq_no %d, %d AddAudio received", self.session_id, last, self.seq_no)
            await self.live.stop()
        elif kind == "SetRecognitionConfig":
            if self.phase is Phase.AWAIT_START:
                raise SpeechmaticsError("protocol_error", "SetRecognitionConfig before StartRecognition")
            config = msg.get("transcription_config")
            if not isinstance(config, dict):
                raise SpeechmaticsError("invalid_message", "SetRecognitionConfig needs a transcription_config")
            if "language" in config and config["language"] != self.live.language:
                raise SpeechmaticsError("invalid_config", "the language cannot change during a session")
            before = self.max_delay
            self._session_options(config)
            if self.max_delay != before and self.phase is Phase.STREAMING:
                async def reconfigured(_: Configure) -> None:
                    return None

                await self.live.configure(Configure(targets=None, language=None, translate_partials=None,
                                                    max_utterance_s=max_utterance_for(self.max_delay)),
                                          reconfigured)  # from the next utterance
        elif kind == "ForceEndOfUtterance":
            if self.phase is Phase.AWAIT_START:
                raise SpeechmaticsError("protocol_error", "ForceEndOfUtterance before StartRecognition")
            await self.live.flush()
        elif kind == "AddChannelAudio":
            await self._channel_audio(msg)
        elif kind == "EndOfChannel":
            channel = self._channel(msg, kind)
            last = msg.get("last_seq_no")
            if isinstance(last, bool) or not isinstance(last, int) or last < 0:
                raise SpeechmaticsError("invalid_message", "EndOfChannel needs last_seq_no (an integer >= 0)")
            await self.live.stop_channel(channel)
        elif kind == "AddAudio":
            raise SpeechmaticsError("invalid_message", "AddAudio: send audio as binary messages")
        else:
            raise SpeechmaticsError("invalid_message", f"unknown message {kind!r}")

    def _channel(self, msg: dict[str, Any], kind: str) -> int:
        """The channel a channel message names (its index in channel_diarization_labels)."""
        if not self.labels:
            raise SpeechmaticsError("invalid_message", f"{kind} needs channel diarization: StartRecognition with "
                                    "diarization \"channel\" and channel_diarization_labels")
        if self.phase is Phase.AWAIT_START:
            raise SpeechmaticsError("protocol_error", f"{kind} before StartRecognition")
        label = msg.get("channel")
        if label not in self.labels:
            raise SpeechmaticsError("invalid_message", f"{kind}: channel {str(label)[:64]!r} is not one of "
                                    f"channel_diarization_labels {list(self.labels)}")
        return self.labels.index(label)

    async def _channel_audio(self, msg: dict[str, Any]) -> None:
        """AddChannelAudio: base64 audio of one channel, acknowledged per channel with ChannelAudioAdded."""
        channel = self._channel(msg, "AddChannelAudio")
        audio = decode_base64(msg.get("data"), self.limits.max_frame_bytes, "AddChannelAudio data")
        await self.live.push_channel(channel, audio)
        label = self.labels[channel]
        self.channel_seq[label] = self.channel_seq.get(label, 0) + 1
        await self.ws.send_json({"message": "ChannelAudioAdded", "channel": label, "seq_no": self.channel_seq[label]})

    async def on_binary(self, data: bytes) -> None:
        if self.phase is Phase.AWAIT_START:
            raise SpeechmaticsError("protocol_error", "AddAudio before StartRecognition")
        if self.labels:
            raise SpeechmaticsError("protocol_error", "this session has channel diarization: send each channel's "
                                    "audio as AddChannelAudio with its label")
        await self.live.push(data)
        self.seq_no += 1
        await self.ws.send_json({"message": "AudioAdded", "seq_no": self.seq_no})

    def _parse_start(self, msg: dict[str, Any]) -> Start:
        audio = msg.get("audio_format")
        config = msg.get("transcription_config")
        if not isinstance(audio, dict) or not isinstance(audio.get("type"), str):
            raise SpeechmaticsError("invalid_message", "StartRecognition needs audio_format with a type")
        if not isinstance(config, dict):
            raise SpeechmaticsError("invalid_message", "StartRecognition needs a transcription_config")
        language = config.get("language", self.path_language or None)
        if language is None:
            raise SpeechmaticsError("invalid_message", "transcription_config needs a language")
        language = parse_language(language, ErrorCode.UNSUPPORTED_LANGUAGE)
        kind = audio["type"]
        codec = ""
        if kind == "raw":
            enc, rate = audio.get("encoding"), audio.get("sample_rate")
            if not isinstance(enc, str) or isinstance(rate, bool) or not isinstance(rate, int):
                raise SpeechmaticsError("invalid_message", "raw audio_format needs an encoding and an integer "
                                        "sample_rate")
            if enc not in RAW_ENCODINGS:
                raise SpeechmaticsError("invalid_audio_type", f"encoding {enc!r}: use pcm_s16le, pcm_f32le or mulaw")
            if not MIN_RATE <= rate <= MAX_RATE:
                raise SpeechmaticsError("invalid_audio_type", f"sample_rate {rate} outside {MIN_RATE}-{MAX_RATE} Hz")
            encoding = RAW_ENCODINGS[enc]
            if enc == "mulaw":
                codec = "mulaw"
        elif kind == "file":  # a WAV, Ogg Opus or WebM Opus stream, decoded as it arrives
            codec, encoding, rate = "file", Encoding.PCM_S16LE, 16000
        else:
            raise SpeechmaticsError("invalid_audio_type", f"audio_format type {kind!r}: use raw or file")
        translation = msg.get("translation_config", config.get("translation_config"))
        targets: tuple[str, ...] = ()
        translate_partials = False
        if translation is not None:
            if not isinstance(translation, dict):
                raise SpeechmaticsError("invalid_config", "translation_config must be an object")
            targets = parse_targets(translation.get("target_languages", []), ErrorCode.INVALID_TARGETS)
            translate_partials = translation.get("enable_partials", False)
            if not isinstance(translate_partials, bool):
                raise SpeechmaticsError("invalid_config", "translation_config.enable_partials must be a boolean")
            self.no_targets = not targets
        self._session_options(config)
        self.eou_trigger = _silence_trigger(config.get("conversation_config"))
        # The pipeline gets PCM: a file decoded to 16 kHz s16le, mulaw expanded to s16le at the client's rate.
        diarize, max_speakers = _diarization(config)
        self.labels = _channel_labels(config)
        self.channel_speakers = bool(self.labels) and not diarize
        return Start(rate, encoding, language, None, targets, translate_partials, codec=codec,
                     endpoint_ms=round(self.eou_trigger * 1000), max_utterance_s=max_utterance_for(self.max_delay),
                     vocabulary=_vocabulary(config.get("additional_vocab")),
                     diarize=diarize, max_speakers=max_speakers, channels=max(1, len(self.labels)))

    async def _served(self, start: Start) -> Start:
        """Targets no translator serves are dropped now and each gets Speechmatics' `unsupported_translation_pair`
        Warning right after RecognitionStarted (the session goes on, as at Speechmatics), not a late one with the
        first final."""
        self.unserved = await self.services.translations.unserved(start.language, start.targets)
        if not self.unserved:
            return start
        return dataclasses.replace(start, targets=tuple(t for t in start.targets if t not in self.unserved))

    def _session_options(self, config: dict[str, Any]) -> None:
        partials = config.get("enable_partials", self.enable_partials)
        if not isinstance(partials, bool):
            raise SpeechmaticsError("invalid_config", "enable_partials must be a boolean")
        delay = config.get("max_delay", self.max_delay)
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)
                                  or not math.isfinite(delay) or not MIN_DELAY <= delay <= MAX_DELAY):
            raise SpeechmaticsError("invalid_config", f"max_delay must be {MIN_DELAY}-{MAX_DELAY} seconds")
        self.enable_partials, self.max_delay = partials, delay

    # ------------------------------------------------------------------ server messages
    async def send_started(self, started: Started) -> None:
        await self.ws.send_json({
            "message": "RecognitionStarted", "id": started.session_id, "orchestrator_version": "tolk",
            "language_pack_info": {"adapted": False, "itn": False, "language_description": started.start.language,
                                   "word_delimiter": " ", "writing_direction": "left-to-right"},
            **({"channels": list(self.labels)} if self.labels else {}),
        })
        for target, why in self.unserved.items():
            self.warned.add(target)
            await self.ws.send_json({"message": "Warning", "type": "unsupported_translation_pair", "reason": why})
        if self.no_targets:
            await self.ws.send_json({"message": "Warning", "type": "empty_translation_target_list",
                                     "reason": "translation_config has no target_languages: nothing is translated"})

    async def send_result(self, result: ClientResult, targets: tuple[str, ...]) -> None:
        if result.kind is ResultKind.END:
            await self.ws.send_json({"message": "EndOfTranscript"})
            return
        if result.kind is ResultKind.SPEAKERS:
            return  # Speechmatics has no message that relabels words already sent
        final = result.kind is ResultKind.FINAL
        label = self.labels[result.channel] if self.labels else None
        # Channel diarization: for a call, the channel is the speaker (channel_and_speaker: the voices in it).
        speaker = label if self.channel_speakers else None
        results = _results(result, label, speaker)
        span = _span(result, results)
        if final or self.enable_partials:
            await self.ws.send_json(render_transcript(result, results, span, label))
        # ForceEndOfUtterance is answered as Speechmatics does; so is a final the silence trigger ended.
        eou = result.endpoint is Endpoint.FLUSH or (self.eou_trigger > 0 and result.endpoint is Endpoint.SILENCE)
        if final and eou:
            await self.ws.send_json({"message": "EndOfUtterance", "format": FORMAT,
                                     "metadata": {"start_time": span[0], "end_time": span[1]},
                                     **({"channel": label} if label is not None else {})})
        for target in targets:
            error = result.translation_errors.get(target)
            if error and target not in self.warned:
                self.warned.add(target)
                await self.ws.send_json({"message": "Warning", "type": "unsupported_translation_pair",
                                         "reason": f"{result.language}->{target}: {error}"})
            if target in result.translations:
                await self.ws.send_json(render_translation(result, target, result.translations[target], span, label,
                                                           speaker))


MODES = ("none", "speaker", "channel", "channel_and_speaker")
MAX_LABEL = 64


def _diarization(config: dict[str, Any]) -> tuple[bool, int]:
    """`diarization` and `speaker_diarization_config.max_speakers`: speaker labels for "speaker" and
    "channel_and_speaker" (there, numbered within each channel, as Speechmatics does)."""
    mode = config.get("diarization", "none")
    if mode not in MODES:
        raise SpeechmaticsError("invalid_config", f"diarization {str(mode)[:64]!r}: use one of {', '.join(MODES)}")
    sd = config.get("speaker_diarization_config", {})
    if not isinstance(sd, dict):
        raise SpeechmaticsError("invalid_config", "speaker_diarization_config must be an object")
    try:
        return check_diarization(mode in ("speaker", "channel_and_speaker"), sd.get("max_speakers"),
                                 ErrorCode.INVALID_DIARIZATION)
    except ProtocolError as err:
        raise SpeechmaticsError("invalid_config", f"speaker_diarization_config: {err.message}") from None


def _channel_labels(config: dict[str, Any]) -> tuple[str, ...]:
    """Channel diarization (`diarization` "channel" or "channel_and_speaker"): `channel_diarization_labels`, one
    unique label per audio channel, each channel sent with AddChannelAudio; () without it."""
    channel_mode = config.get("diarization") in ("channel", "channel_and_speaker")
    labels = config.get("channel_diarization_labels")
    if not channel_mode:
        if labels is not None:
            raise SpeechmaticsError("invalid_config", "channel_diarization_labels needs diarization \"channel\" or "
                                    "\"channel_and_speaker\"")
        return ()
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and 0 < len(x) <= MAX_LABEL
                                                              for x in labels):
        raise SpeechmaticsError("invalid_config", f"channel diarization needs channel_diarization_labels: a list of "
                                f"labels (1-{MAX_LABEL} characters), one per channel")
    if len(set(labels)) != len(labels):
        raise SpeechmaticsError("invalid_config", "channel_diarization_labels must be unique")
    try:
        check_channels(len(labels), ErrorCode.UNSUPPORTED_CHANNELS)
    except ProtocolError as err:
        raise SpeechmaticsError("invalid_config", f"channel_diarization_labels: {err.message}") from None
    return tuple(labels)


def _vocabulary(vocab: Any) -> tuple[str, ...]:
    """`additional_vocab`: strings or `{"content": ..., "sounds_like": [...]}`; the contents are the vocabulary
    (Whisper takes no pronunciations: `sounds_like` is accepted and not used)."""
    if vocab is None:
        return ()
    if not isinstance(vocab, list):
        raise SpeechmaticsError("invalid_config", "additional_vocab must be a list")
    terms = [v.get("content") if isinstance(v, dict) else v for v in vocab]
    try:
        return parse_vocabulary(terms, ErrorCode.INVALID_VOCABULARY)
    except ProtocolError as err:
        raise SpeechmaticsError("invalid_config", f"additional_vocab: {err.message}") from None


def max_utterance_for(max_delay: float | None) -> float:
    """The session's longest utterance for Speechmatics' `max_delay` (0: the server's, where it is left out).

    Speechmatics returns a word's final at most max_delay after the word; Tolk finalises whole utterances, so an
    utterance's first word waits for its cut plus the decode. Cutting at max_delay less the decode keeps that
    within max_delay, down to Tolk's shortest cap (MAX_UTTERANCE_S_RANGE, 2 s): under 2.5 s a word may wait up to
    about 2.5 s. Words before a pause wait for the endpoint (200 ms once the utterance is 40 % of its cap) plus the
    decode. `max_delay_mode` changes nothing here: Tolk does not hold entities back."""
    if max_delay is None:
        return 0.0
    lo, hi = MAX_UTTERANCE_S_RANGE
    return round(min(hi, max(lo, max_delay - DECODE_S)), 3)


def _silence_trigger(conversation: Any) -> float:
    """`conversation_config.end_of_utterance_silence_trigger` in seconds (0 or left out: off, the server's
    endpoint). Speechmatics allows 0-2; Tolk's segmenter needs at least ENDPOINT_MS_RANGE's floor."""
    if conversation is None:
        return 0.0
    if not isinstance(conversation, dict):
        raise SpeechmaticsError("invalid_config", "conversation_config must be an object")
    trigger = conversation.get("end_of_utterance_silence_trigger", 0.0)
    lo = ENDPOINT_MS_RANGE[0] / 1000
    if isinstance(trigger, bool) or not isinstance(trigger, int | float) or not math.isfinite(trigger) \
            or not (trigger == 0 or lo <= trigger <= MAX_TRIGGER):
        raise SpeechmaticsError("invalid_config", f"end_of_utterance_silence_trigger must be {lo:g}-{MAX_TRIGGER:g} "
                                "seconds (0: off)")
    return float(trigger)


def _results(r: ClientResult, channel: str | None = None, speaker: str | None = None) -> list[dict[str, Any]]:
    """Speechmatics' results: words with their timings and confidence, punctuation as its own entries; with
    channel diarization each says its `channel` label, and `speaker` (mode "channel") is every word's speaker."""
    words = [(w.word, w.start, w.end, w.probability, speaker or w.speaker or SPEAKER) for w in r.words]
    if not words and r.text.strip():  # partials carry no word timings: spread the words over the utterance
        tokens = r.text.split()
        t0, t1 = r.speech_start or r.start, r.end
        step = (t1 - t0) / len(tokens)
        words = [(tok, t0 + i * step, t0 + (i + 1) * step, 1.0, speaker or SPEAKER) for i, tok in enumerate(tokens)]
    where = {"channel": channel} if channel is not None else {}
    out: list[dict[str, Any]] = []
    for word, start, end, probability, who in words:
        token = word.strip()
        if not token:
            continue
        m = _PUNCT.match(token)
        core, punct = (m.group(1), m.group(2)) if m else (token, "")
        start, end = round(start, 3), round(end, 3)
        if core:
            out.append({"type": "word", "start_time": start, "end_time": end, **where, "alternatives": [
                {"content": core, "confidence": round(float(probability), 3), "language": r.language,
                 "speaker": who}]})
        for mark in punct[:1]:
            out.append({"type": "punctuation", "start_time": end, "end_time": end, "attaches_to": "previous", **where,
                        "is_eos": mark in ".?!。？！", "alternatives": [
                            {"content": punct, "confidence": 1.0, "language": r.language, "speaker": who}]})
    return out


def _span(r: ClientResult, results: list[dict[str, Any]]) -> tuple[float, float]:
    if results:
        return results[0]["start_time"], results[-1]["end_time"]
    return round(r.speech_start or r.start, 3), round(r.end, 3)


def render_transcript(r: ClientResult, results: list[dict[str, Any]], span: tuple[float, float],
                      channel: str | None = None) -> dict[str, Any]:
    start, end = span
    return {"message": "AddTranscript" if r.kind is ResultKind.FINAL else "AddPartialTranscript", "format": FORMAT,
            **({"channel": channel} if channel is not None else {}),
            "metadata": {"start_time": start, "end_time": end, "transcript": r.text.strip()}, "results": results}


def render_translation(r: ClientResult, language: str, text: str, span: tuple[float, float],
                       channel: str | None = None, speaker: str | None = None) -> dict[str, Any]:
    start, end = span
    return {"message": "AddTranslation" if r.kind is ResultKind.FINAL else "AddPartialTranslation",
            "format": FORMAT, "language": language, **({"channel": channel} if channel is not None else {}),
            "results": [{"content": text, "start_time": start, "end_time": end,
                         "speaker": speaker or r.speaker or SPEAKER}] if text.strip() else []}


def routes(services: Services) -> list[web.RouteDef]:
    """The `/v2[/<language>]` WebSocket (after agent.py's `/v2/agent`)."""

    async def realtime(request: web.Request) -> web.StreamResponse:
        ws = socket.accept(services)
        session = SpeechmaticsSession(services, ws, token=request.get(auth.TOKEN, ""),
                                      path_language=request.match_info.get("language", ""))
        return await socket.serve(request, ws, session)

    return [web.get("/v2", realtime), web.get("/v2/{language}", realtime)]
