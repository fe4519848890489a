"""Speechmatics' voice-agent endpoint, `/v2/agent`: what `speechmatics.agent_stt` (LiveKit's and Pipecat's
Speechmatics plugins) speaks.

The realtime session of realtime.py (same StartRecognition, binary audio, `AudioAdded`,
`EndOfStream`, errors and close codes) with the agent service's own output: results go out as segments
(`AddPartialSegment` / `AddSegment`, one `segment` with its `transcript` and `speaker`, times in `metadata`) and
the service reports speech and turns (`SpeechStarted` / `SpeechEnded`, `StartOfTurn` / `EndOfTurn`).
`turn_config.turn_detection_mode` says who closes a turn: `vad` (the default) — Tolk's endpoint does, so every
final that ended in a pause (or a flush, or the stream's end) is followed by `EndOfTurn`; `external` — the
application does, with `ForceEndOfUtterance` from its own VAD or turn model, and only that ends a turn (Tolk's
pauses still close segments, as the service's content boundaries do). `GetSpeakers` is answered with the labels
the session's segments carried. docs/vendors/speechmatics.md#voice-agents-get-v2agent says what is supported.
"""

from __future__ import annotations

import math
import re
from typing import Any

from aiohttp import web

from edge.core.commands import Start
from edge.core.live import Phase
from edge.core.services import Services
from edge.http import auth
from edge.transports import socket
from edge.transports.speechmatics import realtime as speechmatics
from edge.transports.speechmatics.realtime import SpeechmaticsError, SpeechmaticsSession
from schemas import ClientResult, Endpoint, ResultKind

TURN_MODES = ("vad", "external")
# A final ending this way closes the speaker's turn under the service's VAD; `max_duration` and `gap` cut
# continuous speech, which goes on.
TURN_ENDS = (Endpoint.SILENCE, Endpoint.FLUSH, Endpoint.STOP)
_SENTENCE = re.compile(r"(?<=[.?!。？！])\s+")


class AgentSession(SpeechmaticsSession):
    idle_what = "audio or message"

    def __init__(self, services: Services, ws: web.WebSocketResponse, token: str = "") -> None:
        super().__init__(services, ws, token)
        self.external = False  # turn_config.turn_detection_mode == "external"
        self.emit_sentences = False
        self.in_turn = False  # StartOfTurn sent, EndOfTurn not yet
        self.speakers: list[str] = []  # labels the segments carried, in order of appearance (GetSpeakers)

    # ------------------------------------------------------------------ client messages
    async def on_message(self, kind: str, msg: dict[str, Any]) -> None:
        if kind == "GetSpeakers":
            if self.phase is Phase.AWAIT_START:
                raise SpeechmaticsError("protocol_error", "GetSpeakers before StartRecognition")
            await self.ws.send_json({"message": "SpeakersResult", "speakers": [
                {"label": label, "speaker_identifiers": []} for label in self.speakers]})
            return
        if kind == "ForceEndOfUtterance":
            _timestamp(msg)  # where the application's VAD heard the end: the flush travels with the audio
        await super().on_message(kind, msg)

    def _parse_start(self, msg: dict[str, Any]) -> Start:
        turn = msg.get("turn_config", {})
        if not isinstance(turn, dict):
            raise SpeechmaticsError("invalid_config", "turn_config must be an object")
        mode = turn.get("turn_detection_mode", "vad")
        if mode not in TURN_MODES:
            raise SpeechmaticsError("invalid_config", f"turn_config.turn_detection_mode must be one of "
                                    f"{', '.join(TURN_MODES)}")
        self.external = mode == "external"
        config = msg.get("transcription_config")
        if isinstance(config, dict):
            sentences = config.get("emit_sentences", False)
            if not isinstance(sentences, bool):
                raise SpeechmaticsError("invalid_config", "emit_sentences must be a boolean")
            model = config.get("model")
            if model is not None and not isinstance(model, str):
                raise SpeechmaticsError("invalid_model", "model must be a string")
            self.emit_sentences = sentences
            if config.get("diarization") in ("channel", "channel_and_speaker") \
                    or "channel_diarization_labels" in config:
                raise SpeechmaticsError("invalid_config", "the voice-agent endpoint has speaker diarization only, not "
                                        "channel diarization (as Speechmatics' Agent STT): use /v2 for channels")
        return super()._parse_start(msg)

    # ------------------------------------------------------------------ server messages
    async def send_result(self, result: ClientResult, targets: tuple[str, ...]) -> None:
        if result.kind is ResultKind.END:
            if self.in_turn:  # the stream's end closes whatever turn was open
                await self._turn_over(result.end)
            await self.ws.send_json({"message": "EndOfTranscript"})
            return
        if result.kind is ResultKind.SPEAKERS:
            return  # the agent protocol, like the realtime one, has no message that relabels a segment already sent
        final = result.kind is ResultKind.FINAL
        text = result.text.strip()
        results = speechmatics._results(result)
        start, end = speechmatics._span(result, results)
        if text and not self.in_turn:
            self.in_turn = True
            for kind in ("SpeechStarted", "StartOfTurn"):
                await self.ws.send_json({"message": kind, "metadata": {"start_time": start, "end_time": start}})
        if text and (final or self.enable_partials):
            speaker = _speaker(results)
            if final and speaker not in self.speakers:
                self.speakers.append(speaker)
            for piece, (t0, t1) in _segments(text, results, (start, end), final and self.emit_sentences):
                await self.ws.send_json({
                    "message": "AddSegment" if final else "AddPartialSegment", "format": speechmatics.FORMAT,
                    "segment": {"transcript": piece, "speaker": speaker, "language": result.language,
                                "start_time": t0, "end_time": t1, "is_eou": final and result.endpoint in TURN_ENDS},
                    "metadata": {"start_time": t0, "end_time": t1}})
        ends_turn = result.endpoint is Endpoint.FLUSH if self.external else result.endpoint in TURN_ENDS
        if final and ends_turn and self.in_turn:
            await self._turn_over(end)
        for target in targets:  # translations as the realtime engine sends them (the agent service passes them on)
            if target in result.translations:
                await self.ws.send_json(speechmatics.render_translation(result, target, result.translations[target],
                                                                        (start, end)))

    async def _turn_over(self, end: float) -> None:
        self.in_turn = False
        for kind in ("SpeechEnded", "EndOfTurn"):
            await self.ws.send_json({"message": kind, "metadata": {"start_time": end, "end_time": end}})


def _timestamp(msg: dict[str, Any]) -> None:
    ts = msg.get("timestamp")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)
                           or ts < 0):
        raise SpeechmaticsError("invalid_message", "ForceEndOfUtterance timestamp must be seconds >= 0")


def _speaker(results: list[dict[str, Any]]) -> str:
    """The segment's speaker: the label most of its words carry (Speechmatics' `UU` where none is known)."""
    labels = [r["alternatives"][0].get("speaker", speechmatics.SPEAKER) for r in results if r["type"] == "word"]
    return max(set(labels), key=labels.count) if labels else speechmatics.SPEAKER


def _segments(text: str, results: list[dict[str, Any]], span: tuple[float, float],
              sentences: bool) -> list[tuple[str, tuple[float, float]]]:
    """The final as one segment, or (`emit_sentences`) one per sentence, each timed by its words."""
    pieces = [p for p in _SENTENCE.split(text) if p] if sentences else [text]
    if len(pieces) < 2:
        return [(text, span)]
    words = [r for r in results if r["type"] == "word"]
    out: list[tuple[str, tuple[float, float]]] = []
    i = 0
    for piece in pieces:
        n = len(piece.split())
        mine = words[i:i + n] or words[-1:]
        i += n
        out.append((piece, (mine[0]["start_time"], mine[-1]["end_time"]) if mine else span))
    return out


def routes(services: Services) -> list[web.RouteDef]:
    """The `/v2/agent` WebSocket (mounted before `/v2/<language>`, which would otherwise take it)."""

    async def agent(request: web.Request) -> web.StreamResponse:
        ws = socket.accept(services)
        session = AgentSession(services, ws, token=request.get(auth.TOKEN, ""))
        return await socket.serve(request, ws, session)

    return [web.get("/v2/agent", agent)]
