"""The edge's two ends of the pipeline: audio in (JetStream, partitioned) and a stream's live results out (core
NATS, from fan-out). Subjects come from actors/runtime and schemas, never spelled out here."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors.runtime.bus import Bus
from actors.runtime.partition import partition_for
from edge.core.commands import Start
from schemas import AudioChunk, ClientResult, DecodeError, Encoding, decode, results_subject

log = logging.getLogger("tolk.edge.pipeline")


def lane_stream(session_id: str, channel: int) -> str:
    """The pipeline's stream of one channel of a multichannel session (`=` is outside clients' session ids, so no
    client can start or resume one, and subjects and KV keys take it)."""
    return f"{session_id}=c{channel}"


class Pipeline:
    def __init__(self, bus: Bus, partitions: int) -> None:
        self.bus, self.partitions = bus, partitions

    def partition(self, sid: str) -> int:
        return partition_for(sid, self.partitions)

    async def publish(self, sid: str, seq: int, data: bytes, *, sample_rate: int, encoding: Encoding, language: str,
                      end: bool = False, prompt: str = "", flush: bool = False, endpoint_ms: int = 0,
                      max_utterance_s: float = 0.0, vocabulary: tuple[str, ...] = (), diarize: bool = False,
                      max_speakers: int = 0) -> None:
        """One chunk of a session's audio (`end`: the last, empty; `flush`: empty, the open utterance's final is
        wanted now; `endpoint_ms`, `max_utterance_s`: the session's endpointing, 0 the server's): numbered, so a
        redelivery is dropped."""
        await self.bus.publish_audio(AudioChunk(
            session_id=sid, chunk_seq=seq, sample_rate=sample_rate, encoding=encoding, language=language, data=data,
            received_at=time.time(), end=end, prompt=prompt, flush=flush, endpoint_ms=endpoint_ms,
            max_utterance_s=max_utterance_s, vocabulary=vocabulary, diarize=diarize, max_speakers=max_speakers,
        ), self.partition(sid))

    async def publish_session(self, sid: str, seq: int, data: bytes, start: Start, *, end: bool = False,
                              flush: bool = False) -> None:
        """`publish` with a live session's settings, its `Start` as configured now: every chunk carries them all,
        so a setting added to `Start` and `AudioChunk` is passed here once, not by each caller."""
        await self.publish(sid, seq, data, sample_rate=start.sample_rate, encoding=start.encoding,
                           language=start.language, end=end, prompt=start.prompt, flush=flush,
                           endpoint_ms=start.endpoint_ms, max_utterance_s=start.max_utterance_s,
                           vocabulary=start.vocabulary, diarize=start.diarize, max_speakers=start.max_speakers)

    async def results(self, stream_id: str, deliver: Callable[[ClientResult], Awaitable[None] | None],
                      pending: int = 65536) -> Subscription:
        """Subscribes to a stream's live results; undecodable ones are logged and dropped."""

        async def on_result(msg: Msg) -> None:
            try:
                result = decode(msg.data, ClientResult)
            except DecodeError as exc:
                log.error("%s: dropping undecodable result: %s", stream_id, exc)
                return
            done = deliver(result)
            if done is not None:
                await done

        return await self.bus.nc.subscribe(results_subject(stream_id), cb=on_result, pending_msgs_limit=pending)
