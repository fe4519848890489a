"""Tolk's own streaming protocol on `GET /v1/listen`: JSON control frames, binary (or base64) PCM audio.

A connection whose first message is `subscribe` is a channel listener instead: the session hands its socket to
`ChannelListener` (listener.py).
"""

from __future__ import annotations

from typing import Any

from edge.core.commands import Configure, Flush, Start, Stop, Subscribe
from edge.core.errors import ErrorCode, ProtocolError
from edge.core.live import Phase, Started
from edge.transports.native.codec import Audio, Unknown, parse_text, render_result
from edge.transports.socket import SocketSession
from schemas import NO_ENDPOINT, ClientResult


def endpointing(endpoint_ms: int, max_utterance_s: float) -> dict[str, Any]:
    """The session's own endpointing, echoed as the client set it; nothing where it runs on the server's."""
    out: dict[str, Any] = {}
    if endpoint_ms:
        out["endpoint_ms"] = False if endpoint_ms == NO_ENDPOINT else endpoint_ms
    if max_utterance_s:
        out["max_utterance_s"] = max_utterance_s
    return out


class NativeSession(SocketSession):
    async def on_binary(self, data: bytes) -> None:
        await self.live.push(data)

    async def on_text(self, text: str) -> Subscribe | None:
        try:
            message = parse_text(text, self.limits.max_frame_bytes)
        except ProtocolError as err:
            if err.close is not None:
                raise
            await self.fail(err)  # reported; the connection goes on
            return None
        phase = self.live.phase
        match message:
            case Start():
                await self.begin(message)
            case Audio(data=data):
                await self.live.push(data)
            case Subscribe():
                if phase is Phase.AWAIT_START:
                    return message
                await self.fail(ProtocolError(ErrorCode.NOT_STREAMING,
                                              "this connection streams audio; open another to listen to a channel"))
            case Configure():
                if phase is Phase.AWAIT_START:
                    raise ProtocolError(ErrorCode.INVALID_START, 'send {"type":"start"} first')
                try:
                    await self.live.configure(message, self._configured)
                except ProtocolError as err:  # refused (an unserved target): reported, the session goes on
                    if err.close is not None:
                        raise
                    await self.fail(err)
            case Stop():
                if phase is Phase.AWAIT_START:
                    raise ProtocolError(ErrorCode.INVALID_START, 'send {"type":"start"} first')
                await self.live.stop()
            case Flush():
                await self.live.flush()
            case Unknown(type=kind):
                if phase is Phase.AWAIT_START:
                    raise ProtocolError(ErrorCode.INVALID_START, f'expected {{"type":"start"}}, got {kind!r}')
                await self.fail(ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r} ignored"))
        return None

    async def _configured(self, c: Configure) -> None:
        await self.ws.send_json({"type": "configured", "session_id": self.session_id, "language": c.language,
                                 "targets": list(c.targets or ()), "translate_partials": c.translate_partials,
                                 **endpointing(c.endpoint_ms or 0, c.max_utterance_s or 0.0),
                                 "vocabulary": list(c.vocabulary or ()),
                                 **({"diarize": True, "max_speakers": c.max_speakers or None} if c.diarize else {})})

    def error_body(self, err: ProtocolError) -> dict[str, Any]:
        return err.to_json()

    async def send_started(self, s: Started) -> None:
        await self.ws.send_json({
            "type": "started", "session_id": s.session_id, "sample_rate": s.start.sample_rate,
            "encoding": s.start.wire_encoding, "language": s.start.language, "targets": list(s.targets),
            "translate_partials": s.translate_partials, "resume_token": s.resume_token,
            **endpointing(s.start.endpoint_ms, s.start.max_utterance_s), "vocabulary": list(s.start.vocabulary),
            **({"diarize": True, "max_speakers": s.start.max_speakers or None} if s.start.diarize else {}),
            **({"channels": s.start.channels} if s.start.channels > 1 else {}),
            **({"resumed": True, "replayed": s.replayed} if s.resumed else {}),
        })

    async def send_result(self, result: ClientResult, targets: tuple[str, ...]) -> None:
        await self.ws.send_json(render_result(result, targets=targets, multichannel=self.live.channels > 1))
