"""`tolk listen` and `tolk devices`: live captions in the terminal, from a microphone, system audio, a file or a
broadcast channel. Partials are rewritten in place, finals kept, translations shown under each final; with
`--output`, an SRT file grows as finals arrive."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import TextIO

from tolk_client import audio
from tolk_client.channel import ChannelListener
from tolk_client.live import LiveSession
from tolk_client.results import AudioFrame, Kind, Result, TolkError
from tolk_client.srt import SrtWriter


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    listen = sub.add_parser("listen", help="live captions in the terminal: microphone, system audio, a file or "
                                           "a channel")
    listen.add_argument("--url", default=os.environ.get("TOLK_URL", "http://127.0.0.1:8080"),
                        help="the edge (env TOLK_URL)")
    listen.add_argument("--token", default=os.environ.get("TOLK_TOKEN"), help="API or signed token (env TOLK_TOKEN)")
    listen.add_argument("--language", default="auto")
    listen.add_argument("--targets", default="", help="comma-separated translation targets, e.g. pt,de")
    listen.add_argument("--output", help="write an SRT file as finals arrive")
    src = listen.add_mutually_exclusive_group()
    src.add_argument("--file", help="stream this file (any format FFmpeg reads) at real-time pace")
    src.add_argument("--channel", help="follow this broadcast channel")
    src.add_argument("--device", help="input device index or name (see `tolk devices`); default: the default input")
    src.add_argument("--system-audio", action="store_true", help="what this computer plays (the output's monitor)")
    listen.add_argument("--pace", type=float, default=1.0, help="with --file: × real time (0: as fast as possible)")
    listen.add_argument("--diarize", action="store_true", help="label who speaks (S1, S2...) before each final")
    listen.add_argument("--channels", type=int, default=1,
                        help="transcribe each of the audio's N channels on its own (a stereo call: one side each); "
                             "every line says its channel (ch0, ch1...). Default 1: mixed down")
    sub.add_parser("devices", help="input devices, system-audio monitors included")
    try:
        from tolk_client.desktop.app import add_parser
    except ImportError:  # no Qt here: `tolk desktop` says what to install
        desktop = sub.add_parser("desktop", help="live subtitles and voice typing (needs `pip install '.[desktop]'`)")
        desktop.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        add_parser(sub)


class Screen:
    """Partials rewritten in place on a terminal (greyed), plain lines otherwise; finals kept."""

    def __init__(self, out: TextIO = sys.stdout, multichannel: bool = False) -> None:
        self.out = out
        self.tty = out.isatty()
        self.partial = False
        self.multichannel = multichannel  # results carry their audio channel: shown on each line

    def who(self, r: Result) -> str:
        """`ch1`, `S2`, `ch1 S2` (diarized within a channel; `?` until labelled) or "": whose line it is."""
        tags = [f"ch{r.audio_channel}"] if self.multichannel else []
        if r.speaker or r.speakers_late:
            tags.append(r.speaker or "?")
        return " ".join(tags)

    def show(self, r: Result) -> None:
        if r.kind is Kind.SPEAKERS:  # the labels of a final already printed, corrected
            self.out.write(f"  (speaker of \"{r.text[:40]}\": {self.who(r)})\n")
            self.out.flush()
            return
        channel = f"[ch{r.audio_channel}] " if self.multichannel else ""
        if not r.is_final:
            if self.tty:
                self.out.write(f"\r\x1b[K\x1b[2m{channel}{r.text}\x1b[0m")
                self.partial = True
            else:
                self.out.write(f"… {channel}{r.text}\n")
        else:
            if self.partial:
                self.out.write("\r\x1b[K")
                self.partial = False
            who = f"[{self.who(r)}] " if self.who(r) else ""
            if r.text or r.replay:
                self.out.write(f"{'(earlier) ' if r.replay else ''}{who}{r.text}\n")
            for lang, text in r.translations.items():
                self.out.write(f"  [{lang}] {text}\n")
        self.out.flush()


async def _live(args: argparse.Namespace, targets: list[str], chunks: AsyncIterator[bytes], screen: Screen,
                srt: SrtWriter | None) -> int:
    async with LiveSession(args.url, language=args.language, targets=targets, token=args.token,
                           diarize=getattr(args, "diarize", False), channels=getattr(args, "channels", 1)) as s:
        async def pump() -> None:
            try:
                async for chunk in chunks:
                    await s.send(chunk)
            finally:
                await asyncio.shield(s.stop())

        feeder = asyncio.create_task(pump())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # end of audio: what was said is still finalized, then exit
            loop.add_signal_handler(sig, feeder.cancel)
        try:
            async for r in s:
                screen.show(r)
                if srt:
                    srt.add(r)
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
    print(f"# session {s.session_id}" + (f", resumed {s.resumes}×" if s.resumes else ""), file=sys.stderr)
    return 0


async def _channel(args: argparse.Namespace, targets: list[str], screen: Screen, srt: SrtWriter | None) -> int:
    async with ChannelListener(args.url, args.channel, targets=targets or None, token=args.token) as ch:
        async for item in ch:
            if isinstance(item, AudioFrame):
                continue
            screen.show(item)
            if srt and not item.replay:
                srt.add(item)
    return 0


def listen(args: argparse.Namespace) -> int:
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not 1 <= args.channels <= 8 or (args.channels > 1 and args.channel):
        print("tolk listen: --channels is 1-8, for audio this sends (not with --channel)", file=sys.stderr)
        return 2
    screen = Screen(multichannel=args.channels > 1)
    srt = SrtWriter(args.output) if args.output else None
    try:
        if args.channel:
            return asyncio.run(_channel(args, targets, screen, srt))
        if args.file:
            chunks = audio.file_chunks(args.file, args.pace, args.channels)
        else:
            device: int | str | None = int(args.device) if args.device and args.device.isdigit() else args.device
            chunks = audio.device_chunks(device, system_audio=args.system_audio, channels=args.channels)
        return asyncio.run(_live(args, targets, chunks, screen, srt))
    except TolkError as err:
        print(f"tolk listen: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        print(f"tolk listen: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if srt:
            srt.close()


def devices() -> int:
    for d in audio.devices():
        where = "monitor" if d.get("monitor") else f"#{d['index']}"
        print(f"{where:>8}  {d['name']}  ({d['channels']} ch, {d['rate']:.0f} Hz)")
    return 0


def desktop(args: argparse.Namespace) -> int:
    try:
        from tolk_client.desktop.app import main
    except ImportError as exc:
        print(f"tolk desktop: needs the desktop extra: pip install '.[desktop]' ({exc})", file=sys.stderr)
        return 2
    return main(args)
