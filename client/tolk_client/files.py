"""Files: upload for a transcript (whole, or streamed as server-sent events), and exports of past sessions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tolk_client import _net
from tolk_client.results import Result, TolkError


@dataclass(frozen=True)
class FileDone:
    """The last event of a streamed transcription: the whole transcript (`json` / `verbose_json` body)."""

    body: dict[str, Any]


def _form(path: str | Path, language: str, targets: Sequence[str], response_format: str,
          stream: bool, channels: int = 1) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", Path(path).read_bytes(), filename=Path(path).name)
    form.add_field("language", language)
    form.add_field("response_format", response_format)
    if targets:
        form.add_field("targets", ",".join(targets))
    if stream:
        form.add_field("stream", "true")
    if channels > 1:  # the file's channel count: each channel transcribed on its own
        form.add_field("channels", str(channels))
    return form


async def _raise_for(resp: aiohttp.ClientResponse) -> None:
    if resp.status < 400:
        return
    try:
        err = (await resp.json())["error"]
        raise TolkError.from_json(err, resp.status)
    except (aiohttp.ContentTypeError, json.JSONDecodeError, KeyError, TypeError):
        raise TolkError("http_error", f"HTTP {resp.status}", resp.status) from None


async def transcribe(url: str, path: str | Path, *, language: str = "auto", targets: Sequence[str] = (),
                     response_format: str = "json", token: str | None = None,
                     channels: int = 1) -> dict[str, Any] | str:
    """The whole transcript of a file: a dict for json/verbose_json, text for text/srt/vtt. `channels`: the
    file's count, to have each channel transcribed on its own (every segment says its `channel`)."""
    async with aiohttp.ClientSession(headers=_net.headers(token)) as http, http.post(
            _net.http_url(url, "/v1/transcriptions"),
            data=_form(path, language, targets, response_format, False, channels),
            timeout=aiohttp.ClientTimeout(total=None)) as resp:
        await _raise_for(resp)
        if response_format in ("json", "verbose_json"):
            body: dict[str, Any] = await resp.json()
            return body
        return await resp.text()


async def stream(url: str, path: str | Path, *, language: str = "auto", targets: Sequence[str] = (),
                 response_format: str = "verbose_json",
                 token: str | None = None, channels: int = 1) -> AsyncIterator[Result | FileDone]:
    """Partials and finals as the file is transcribed (server-sent events), then FileDone. `channels` as in
    `transcribe`: results then say their `audio_channel`."""
    async with aiohttp.ClientSession(headers=_net.headers(token)) as http, http.post(
            _net.http_url(url, "/v1/transcriptions"),
            data=_form(path, language, targets, response_format, True, channels),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120)) as resp:
        await _raise_for(resp)
        event, data = "message", ""
        async for raw in resp.content:  # lines; "\r\n", "\n" and "\r" all end one
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith(":"):
                continue  # a keep-alive comment
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].lstrip(" ")
            elif not line and data:
                payload = json.loads(data)
                if event in ("partial", "final"):
                    yield Result.from_json(payload)
                elif event == "done":
                    yield FileDone(payload)
                    return
                elif event == "error":
                    raise TolkError.from_json(payload)
                event, data = "message", ""


async def export(url: str, session_id: str, fmt: str = "srt", *, translation: str | None = None,
                 token: str | None = None) -> str:
    """A finished session's transcript (kept 1 h): srt, vtt, text, json or verbose_json; only its owner reads it."""
    params = {"format": fmt} | ({"translation": translation} if translation else {})
    async with aiohttp.ClientSession(headers=_net.headers(token)) as http, http.get(
            _net.http_url(url, f"/v1/sessions/{session_id}/transcript"), params=params) as resp:
        await _raise_for(resp)
        return await resp.text()
