"""Speechmatics' own realtime SDK (`speechmatics-python`, unmodified) against Tolk's `/v2`, recording what comes
back and when: for tests/test_vendor_speechmatics.py and loadtest/speechmatics_latency.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

SERVER_MESSAGES = ("RecognitionStarted", "AudioAdded", "AddPartialTranscript", "AddTranscript",
                   "AddPartialTranslation", "AddTranslation", "EndOfTranscript", "Warning", "Error")


@dataclass
class SmRun:
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (wall clock, message)
    t0: float = 0.0  # wall clock when stream time 0 was sent
    pace: float = 1.0
    error: str = ""  # the SDK's exception, if it raised one
    sent_bytes: int = 0

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m["message"] == kind]

    def kinds(self) -> list[str]:
        return [m["message"] for _, m in self.messages if m["message"] != "AudioAdded"]

    def finals(self) -> list[dict[str, Any]]:
        return [m for m in self.of("AddTranscript") if m["metadata"]["transcript"]]

    def text(self) -> str:
        return " ".join(m["metadata"]["transcript"] for m in self.finals())

    def final_latencies(self) -> list[float]:
        """Seconds from sending the audio of an utterance's last word to receiving its AddTranscript."""
        return [at - (self.t0 + m["metadata"]["end_time"] / self.pace) for at, m in self.messages
                if m["message"] == "AddTranscript" and m["metadata"]["transcript"]]


class PacedReader:
    """A file-like the SDK reads from: `data` released at `pace` × real time (`bytes_per_s` of audio)."""

    def __init__(self, data: bytes, bytes_per_s: float | None, pace: float, run: SmRun) -> None:
        self.data, self.pos, self.rate, self.pace, self.run = data, 0, bytes_per_s, pace, run

    async def read(self, n: int) -> bytes:
        if self.pos == 0:
            self.run.t0 = time.time()
        if self.rate:
            due = self.run.t0 + self.pos / self.rate / self.pace
            if (delay := due - time.time()) > 0:
                await asyncio.sleep(delay)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        self.run.sent_bytes += len(chunk)
        return chunk


async def stream_sdk(url: str, data: bytes, *, bytes_per_s: float | None = None, pace: float = 1.0,
                     language: str = "en", encoding: str | None = "pcm_s16le", sample_rate: int = 16000,
                     chunk_size: int = 3200, enable_partials: bool = True, targets: list[str] | None = None,
                     translate_partials: bool = False, max_delay: float | None = None, token: str | None = None,
                     timeout: float = 180.0) -> SmRun:
    """Stream `data` (raw PCM, or a whole file with `encoding=None`) through `speechmatics.client.WebsocketClient`
    at `url` (e.g. ws://host:port/v2: the SDK appends /<language>). `max_delay` is left out unless given: Tolk
    honours it by cutting utterances that long (docs/vendors/speechmatics.md), which a benchmark of the server's
    own endpointing must not do."""
    from speechmatics.client import WebsocketClient
    from speechmatics.models import (
        AudioSettings,
        ConnectionSettings,
        RTTranslationConfig,
        TranscriptionConfig,
    )

    run = SmRun(pace=pace)
    client = WebsocketClient(ConnectionSettings(url=url, auth_token=token,
                                                ssl_context=None))  # type: ignore[arg-type]  # plain ws://
    for kind in SERVER_MESSAGES:
        client.add_event_handler(kind, lambda m: run.messages.append((time.time(), m)))  # type: ignore[arg-type]
    config = TranscriptionConfig(
        language=language, enable_partials=enable_partials, max_delay=max_delay,
        translation_config=RTTranslationConfig(target_languages=targets, enable_partials=translate_partials)
        if targets is not None else None,
    )
    settings = AudioSettings(encoding=encoding, sample_rate=sample_rate, chunk_size=chunk_size)  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(client.run(PacedReader(data, bytes_per_s, pace, run), config, settings), timeout)
    except Exception as exc:  # the SDK raises on an Error message (TranscriptionError) or a refused handshake
        run.error = f"{exc.__class__.__name__}: {exc}"
    return run
