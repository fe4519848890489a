"""File jobs: a recording goes through the same JetStream pipeline as a microphone, as a session `file-<id>`,
only faster than real time (`file_pace`).

Every API that takes files (Tolk's, OpenAI's, Deepgram's) runs the same sequence through `FileJobs.upload()`: a
job slot, the upload stored under a temporary name of ours (the client's file name never touches a path), probed,
transcribed, removed. Jobs beyond `file_jobs` get 503 `busy`, not a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import tempfile
import threading
import time
import uuid
import wave
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import av
import msgspec

from actors.runtime.media import SourceChunk, SourceEnded, read_source
from edge.audio.pcm import MAX_CHANNELS
from edge.core import replay
from edge.core.errors import ApiError
from edge.core.metrics import EdgeMetrics
from edge.core.pipeline import Pipeline, lane_stream
from edge.core.records import Listeners, Sessions
from edge.http.formats import Cue
from edge.settings import EdgeSettings
from schemas import ClientResult, Encoding, ResultKind, SessionRecord, client_result

log = logging.getLogger("tolk.edge.files")

Read = Callable[[int], Awaitable[bytes]]  # up to n bytes of the upload; b"" at its end


def probe(path: str) -> tuple[float, int]:
    """Duration in seconds and channels (the first frame's); ApiError 415 when FFmpeg finds no decodable audio."""
    try:
        with av.open(path) as container:
            audio = next((s for s in container.streams if s.type == "audio"), None)
            if audio is None:
                raise ApiError(415, "unsupported_media", "the file has no audio stream")
            seconds, channels = 0.0, 0
            for packet in container.demux(audio):  # decode a little: a header alone is not audio
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame) and frame.sample_rate:
                        seconds += frame.samples / frame.sample_rate
                        channels = channels or len(frame.layout.channels)
                if seconds >= 0.1:
                    break
            else:
                raise ApiError(415, "unsupported_media", "no audio to transcribe: under 0.1 s decodes")
            return float(container.duration or 0) / 1e6, channels
    except ApiError:
        raise
    except (av.error.FFmpegError, ValueError, StopIteration) as exc:
        raise ApiError(415, "unsupported_media", f"not audio FFmpeg can decode ({exc.__class__.__name__})") from None


def check_count(expect: int, found: int) -> None:
    """ApiError 400 `invalid_channels` when a multichannel upload's `channels` (`expect`; 0: any) is not the file's."""
    if expect and found != expect:
        raise ApiError(400, "invalid_channels", f"channels is {expect} but the file has {found} channel"
                       f"{'s' if found != 1 else ''}: send its own count, or leave channels out to have it mixed "
                       "down", "channels")


def split_file(path: str, out_dir: str | None, expect: int = 0) -> list[str]:
    """A file's channels as 16 kHz 16-bit mono WAVs, one per channel, written as it decodes (a multichannel
    upload is transcribed channel by channel). ApiError 415 when it does not decode, 400 `invalid_channels` over
    MAX_CHANNELS or, with `expect`, another count than that (found at the first frame, before any is written)."""
    paths: list[str] = []
    writers: list[wave.Wave_write] = []
    try:
        with av.open(path) as container:
            audio = next((s for s in container.streams if s.type == "audio"), None)
            if audio is None:
                raise ApiError(415, "unsupported_media", "the file has no audio stream")
            resampler: av.AudioResampler | None = None
            for packet in container.demux(audio):
                for frame in packet.decode():
                    if not isinstance(frame, av.AudioFrame):
                        continue
                    if resampler is None:
                        channels = len(frame.layout.channels)
                        if channels > MAX_CHANNELS:
                            raise ApiError(400, "invalid_channels", f"the file has {channels} channels; at most "
                                           f"{MAX_CHANNELS} are transcribed one by one")
                        check_count(expect, channels)
                        resampler = av.AudioResampler(format="s16", layout=frame.layout, rate=16000)
                        for _ in range(channels):
                            fd, out = tempfile.mkstemp(prefix="tolk-channel-", suffix=".wav", dir=out_dir)
                            os.close(fd)
                            paths.append(out)
                            w = wave.open(out, "wb")
                            w.setnchannels(1)
                            w.setsampwidth(2)
                            w.setframerate(16000)
                            writers.append(w)
                    for out_frame in resampler.resample(frame):
                        pcm = out_frame.to_ndarray().reshape(-1, len(writers))
                        for c, w in enumerate(writers):
                            w.writeframes(pcm[:, c].astype("<i2").tobytes())
    except ApiError:
        for p in paths:
            remove(p)
        raise
    except (av.error.FFmpegError, ValueError) as exc:
        for p in paths:
            remove(p)
        raise ApiError(415, "unsupported_media", f"not audio FFmpeg can decode ({exc.__class__.__name__})") from None
    finally:
        for w in writers:
            w.close()
    return paths


def _on_channel(r: ClientResult, channel: int, sid: str) -> ClientResult:
    """One channel's final as its multichannel session's export shows it: tagged with the channel, which is the
    speaker (`ch0`; with diarization within each channel, `ch0 S1`), so SRT / WebVTT say who spoke."""
    def who(speaker: str) -> str:
        return f"ch{channel} {speaker}" if speaker else f"ch{channel}"

    words = tuple(msgspec.structs.replace(w, speaker=who(w.speaker)) for w in r.words)
    return msgspec.structs.replace(r, session_id=sid, channel=channel, speaker=who(r.speaker), words=words)


async def _finals(results: AsyncIterator[ClientResult], language: str) -> dict[int, tuple[dict[int, ClientResult],
                                                                                          str]]:
    """A file's non-empty finals per channel, by utterance (a `speakers` correction replacing its final's labels),
    and each channel's language (the detected one for `auto`)."""
    out: dict[int, tuple[dict[int, ClientResult], str]] = {}
    async for r in results:
        finals, lang = out.setdefault(r.channel, ({}, language))
        if r.kind is ResultKind.FINAL and r.text:
            finals[r.utterance_id] = r
            out[r.channel] = finals, r.language or lang
        elif r.kind is ResultKind.SPEAKERS and r.utterance_id in finals:
            finals[r.utterance_id] = r
    return out


def channel_cue(r: ClientResult) -> Cue:
    """A multichannel file's final (`run_channels`) as its cue: tagged with its channel, its speaker the channel's
    label (`_on_channel`)."""
    return Cue.of(_on_channel(r, r.channel, r.session_id), r.channel)


def remove(path: str) -> None:
    """Unlinking a temp file is one syscall: not worth a thread hop."""
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class Upload:
    """One job's upload: stored by `store`, removed when the job ends (`FileJobs.upload`)."""

    def __init__(self, jobs: FileJobs) -> None:
        self.jobs = jobs
        self.path = ""
        self.channels = 0  # the file's, once `duration` probed it

    async def store(self, read: Read) -> str:
        """Copy the upload to a temp file named by us (never by the client), enforcing the size limit. A second
        call replaces the first file."""
        remove(self.path)
        self.path = ""
        limit = self.jobs.cfg.max_upload_bytes
        fd, path = tempfile.mkstemp(prefix="tolk-upload-", dir=self.jobs.cfg.upload_dir or None)
        size = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                while chunk := await read(65536):
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, "file_too_large", f"uploads are limited to {limit} bytes")
                    fh.write(chunk)
        except BaseException:
            remove(path)
            raise
        if size == 0:
            remove(path)
            raise ApiError(400, "empty_file", "the uploaded file is empty")
        self.path = path
        return path

    async def duration(self) -> float:
        """`probe` on a thread: ApiError 415 when the file holds no decodable audio. Notes its `channels`."""
        seconds, self.channels = await asyncio.get_running_loop().run_in_executor(self.jobs.threads, probe, self.path)
        return seconds


class FileJobs:
    def __init__(self, cfg: EdgeSettings, pipeline: Pipeline, sessions: Sessions, listeners: Listeners,
                 metrics: EdgeMetrics, instance: str) -> None:
        self.cfg, self.pipeline, self.sessions, self.listeners = cfg, pipeline, sessions, listeners
        self.metrics, self.instance = metrics, instance
        # Each job decodes on a thread of its own, a multichannel one on one per channel (and splits on another
        # first): never waiting for a thread, a channel's lane cannot time out behind the others'.
        self.threads = ThreadPoolExecutor(max_workers=(MAX_CHANNELS + 1) * cfg.file_jobs, thread_name_prefix="file")
        self.jobs = 0

    @contextlib.asynccontextmanager
    async def upload(self) -> AsyncIterator[Upload]:
        """A job slot (ApiError 503 `busy` when all are taken) and its upload, removed at the end."""
        if self.jobs >= self.cfg.file_jobs:
            raise ApiError(503, "busy", f"{self.cfg.file_jobs} files are being transcribed; try again shortly")
        self.jobs += 1
        upload = Upload(self)
        try:
            yield upload
        finally:
            self.jobs -= 1
            remove(upload.path)

    async def transcribe(self, path: str, language: str, targets: tuple[str, ...] = (), prompt: str = "",
                         owner: str = "", diarize: bool = False, channels: int = 1) -> tuple[list[Cue], str]:
        """Every final of the file as cues, and the language they came in (the detected one for `auto`). With
        `diarize`, a `speakers` correction replaces its final's labels. `channels` > 1: the file has that many
        (else ApiError 400 `invalid_channels`), each transcribed on its own (`run_channels`); every cue says its
        channel, which is its speaker too (`ch0`, `ch0 S1` with diarization), as a multichannel session's export."""
        if channels == 1:
            heard = await _finals(self.run(path, language, targets, prompt, owner, diarize), language)
            finals, lang = heard.get(0, ({}, language))
            return [Cue.of(r) for r in finals.values()], lang
        heard = await _finals(self.run_channels(path, language, targets, prompt, owner, diarize, channels), language)
        cues = [channel_cue(r) for finals, _ in heard.values() for r in finals.values()]
        return cues, next((lang for _, lang in heard.values() if lang and lang != "auto"), language)

    async def transcribe_channels(self, path: str, language: str, owner: str = "",
                                  diarize: bool = False) -> list[tuple[list[Cue], str]]:
        """Each channel of the file transcribed on its own (Deepgram's pre-recorded `multichannel`), as many as
        the file has: each channel's cues (labelled as that channel's alone) and language."""
        heard = await _finals(self.run_channels(path, language, owner=owner, diarize=diarize), language)
        return [([Cue.of(r) for r in finals.values()], lang) for _, (finals, lang) in sorted(heard.items())]

    async def run_channels(self, path: str, language: str, targets: tuple[str, ...] = (), prompt: str = "",
                           owner: str = "", diarize: bool = False, channels: int = 0) -> AsyncIterator[ClientResult]:
        """A multichannel file as a multichannel session: its channels split into WAVs of their own (on a thread;
        `channels`, if given, must be the file's count), each run as a lane (`lane_stream`, as live sessions'
        channels run) side by side, and their results merged as they come, under the session's id and tagged with
        their channel; one END after every channel's. The session's record says its channels, so its export
        (`finals`) merges them as a live multichannel session's."""
        loop = asyncio.get_running_loop()
        paths = await loop.run_in_executor(self.threads, split_file, path, self.cfg.upload_dir or None, channels)
        sid = f"file-{uuid.uuid4().hex}"
        merged: asyncio.Queue[ClientResult | Exception] = asyncio.Queue()

        async def lane(channel: int, part: str) -> None:
            stream = lane_stream(sid, channel) if len(paths) > 1 else sid
            try:
                async with contextlib.aclosing(self.run(part, language, targets, prompt, owner, diarize,
                                                        stream=stream)) as results:
                    async for r in results:
                        merged.put_nowait(msgspec.structs.replace(r, session_id=sid, channel=channel))
            except Exception as exc:  # e.g. its timeout: the whole file fails with it
                merged.put_nowait(exc)

        lanes: list[asyncio.Task[None]] = []
        try:
            if not paths:
                raise ApiError(415, "unsupported_media", "no audio to transcribe")
            await self._record(sid, language, owner, len(paths))
            lanes = [asyncio.create_task(lane(c, p), name=f"edge.file.{sid}.c{c}") for c, p in enumerate(paths)]
            ended = 0
            while True:
                item = await merged.get()
                if isinstance(item, Exception):
                    raise item
                if item.kind is ResultKind.END:
                    ended += 1
                    if ended < len(paths):
                        continue  # the file ends with its last channel
                yield item
                if item.kind is ResultKind.END:
                    return
        finally:
            for task in lanes:
                task.cancel()
            for task in lanes:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for p in paths:
                remove(p)

    async def _record(self, sid: str, language: str, owner: str, channels: int = 1) -> None:
        """The file's session record: `owner` (the uploader's identity, edge/http/auth.py) so that only it can export
        the transcript; `channels` so that a multichannel file's export reads its lanes."""
        now = time.time()
        await self.sessions.put(SessionRecord(
            session_id=sid, status="file", sample_rate=16000, encoding=Encoding.PCM_S16LE, language=language,
            partition=self.pipeline.partition(sid), created_at=now, updated_at=now, edge=self.instance,
            resume_key=secrets.token_urlsafe(18), owner=owner, channels=channels))  # key never given out

    async def run(self, path: str, language: str, targets: tuple[str, ...], prompt: str = "",
                  owner: str = "", diarize: bool = False, stream: str = "") -> AsyncGenerator[ClientResult, None]:
        """`owner`: the uploader's identity (edge/http/auth.py), recorded so that only it can export the transcript.
        `stream`: one channel's lane of a multichannel file (`run_channels`, which keeps the record); else a
        session of its own."""
        sid = stream or f"file-{uuid.uuid4().hex}"
        self.metrics.sessions_started.labels("file").inc()
        if not stream:
            await self._record(sid, language, owner)
        results: asyncio.Queue[ClientResult] = asyncio.Queue()  # finals of a file are never dropped
        sub = await self.pipeline.results(sid, results.put_nowait)
        if targets:
            await self.listeners.put(sid, "owner", targets, False)
        feeder = asyncio.create_task(self._feed(path, sid, language, prompt, diarize), name=f"edge.file.{sid}")
        try:
            while True:
                try:
                    result = await asyncio.wait_for(results.get(), timeout=self.cfg.file_result_timeout_s)
                except TimeoutError:
                    if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
                        log.error("%s: feeding the pipeline failed: %r", sid, feeder.exception())
                    raise ApiError(504, "timeout", "the pipeline did not finish this file in time") from None
                yield result
                if result.kind is ResultKind.END:
                    return
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if targets:
                await self.listeners.remove(sid, "owner")

    async def _feed(self, path: str, sid: str, language: str, prompt: str = "", diarize: bool = False) -> None:
        """Decode on a thread, publish 1 s chunks, at most `file_pace` × real time ahead of the wall clock."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[SourceChunk | None] = asyncio.Queue(maxsize=16)
        stop = threading.Event()

        def decode_all() -> None:
            def emit(chunk: SourceChunk) -> None:
                asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()

            try:
                read_source(path, emit, stop, 0.0, realtime=False, mp3=False, chunk_samples=16000)
            except SourceEnded:
                pass
            except Exception as exc:  # a truncated or damaged tail: transcribe what decoded
                log.warning("%s: decoding stopped early: %s", sid, exc)
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        thread = loop.run_in_executor(self.threads, decode_all)
        seq = 0
        began = time.monotonic()
        try:
            while True:
                chunk = await queue.get()
                seq += 1
                if chunk is not None:
                    ahead = chunk.t / self.cfg.file_pace - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                await self.pipeline.publish(sid, seq, chunk.pcm if chunk else b"", sample_rate=16000,
                                            encoding=Encoding.PCM_S16LE, language=language, end=chunk is None,
                                            prompt=prompt, diarize=diarize)
                if chunk is None:
                    return
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                while not queue.empty():
                    queue.get_nowait()
            await thread

    # ------------------------------------------------------------------ finished sessions
    async def finals(self, sid: str, who: str) -> tuple[list[ClientResult], int]:
        """A finished session's finals, for its owner only, and its audio channels (a multichannel one's exported
        cues say their channel); anyone else is told what a missing one tells (ids may be guessable). With
        authentication off every caller is "" and so is every owner. A diarized session's carry their speakers."""
        rec, _ = await self.sessions.get(sid)
        if not await self._owns(sid, who, rec):
            return [], 1
        if rec is not None and rec.channels > 1:  # each channel's stream, merged in time order
            merged = [_on_channel(r, c, sid) for c in range(rec.channels)
                      for r in await self._stream_finals(lane_stream(sid, c))]
            return sorted(merged, key=lambda r: (r.start, r.channel)), rec.channels
        return await self._stream_finals(sid), 1

    async def _stream_finals(self, stream: str) -> list[ClientResult]:
        stored = replay.finals(await replay.stored(self.pipeline.bus, stream))
        finals = [client_result(t, t.text, t.text) for t in stored]
        if any(t.diarize for t in stored):
            finals = replay.labelled(finals, await replay.speakers(self.pipeline.bus, stream))
        return finals

    async def _owns(self, sid: str, who: str, rec: SessionRecord | None) -> bool:
        """`rec`: the session's record, already read."""
        if sid.startswith("ch="):
            return True  # a channel run: channels are every authenticated listener's
        lane = re.fullmatch(r"(.+)=c\d", sid)
        if lane:  # one audio channel of a multichannel session: its session's owner's
            rec, _ = await self.sessions.get(lane.group(1))
        if rec is None:
            return not who  # no record (expired, or from before owners were kept): open only when auth is off
        return bool(rec.owner == who)
