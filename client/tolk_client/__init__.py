"""Tolk's Python client: live sessions, broadcast channels and files, with reconnect and resume built in.

    async with tolk_client.connect("http://127.0.0.1:8080", language="en", targets=["pt"]) as s:
        await s.send(pcm16_chunk)          # as the audio comes; then
        await s.stop()
        async for r in s:                  # Result: partials and finals, typed
            print(r.kind.value, r.text, r.translations)

`subscribe(url, "news")` follows a broadcast channel, `files.transcribe` / `files.stream` / `files.export`
handle recordings, and `tolk_client.sync` wraps the same for code without an event loop.
"""

from tolk_client import files, sync
from tolk_client.channel import ChannelListener, subscribe
from tolk_client.live import LiveSession, connect
from tolk_client.results import AudioFrame, Kind, Result, TolkError, Word

__all__ = ["AudioFrame", "ChannelListener", "Kind", "LiveSession", "Result", "TolkError", "Word", "connect", "files",
           "subscribe", "sync"]
