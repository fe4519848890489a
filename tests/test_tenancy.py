"""Tenants cannot read each other: a real `tolk up` with two API tokens and a token secret. A session (or an
upload) belongs to the identity that made it; anyone else gets the 404 / `unknown_session` a missing one gets,
and the owner still gets everything."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest

from loadtest.client import stream_pcm
from loadtest.speech import clips, encode_audio
from tests.conftest import TOLK, Running, start_tolk, stop_tolk

pytestmark = pytest.mark.e2e

SECRET = "tenancy-test-secret-of-32-bytes-or-more"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    run = start_tolk(tmp_path_factory.mktemp("tolk-tenancy"), env={
        "TOLK_API_TOKENS": "alpha,beta", "TOLK_TOKEN_SECRET": SECRET, "TOLK_MT_DOWNLOAD": "0"})
    yield run
    stop_tolk(run)


def signed(subject: str) -> str:
    out = subprocess.run([TOLK, "token", "--subject", subject], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TOLK_TOKEN_SECRET": SECRET}, check=True)
    return out.stdout.strip()


async def export(stack: Running, sid: str, token: str, fmt: str = "verbose_json") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(
            f"{stack.http}/v1/sessions/{sid}/transcript", params={"format": fmt},
            headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await (resp.json() if resp.content_type == "application/json" else resp.text())


async def resume(stack: Running, sid: str, key: str, token: str) -> dict[str, Any]:
    """What a resume of the finished session `sid` with its resume token gets as its first reply."""
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{stack.ws}?token={token}") as ws:
        await ws.send_json({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en",
                            "session_id": sid, "resume_token": key, "resume_from": 0})
        reply: dict[str, Any] = await ws.receive_json(timeout=30)
        return reply


@pytest.mark.parametrize("who", ["api_tokens", "signed_subjects"])
async def test_sessions_belong_to_who_made_them(stack: Running, who: str) -> None:
    owner, other = ("alpha", "beta") if who == "api_tokens" else (signed("alice"), signed("bob"))
    c = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    pcm, rate = c.pcm16()
    sid = f"alice-private-{who}"
    run = await stream_pcm(f"{stack.ws}?token={owner}", pcm, rate, pace=4.0, session_id=sid)
    assert run.done and not run.errors, run.errors
    said = [r["text"] for r in run.results if r["type"] == "final" and r["text"]]

    status, body = await export(stack, sid, owner)
    assert status == 200 and [s["text"] for s in body["segments"]] == said
    def missing(sid: str) -> tuple[int, Any]:  # word for word what a session that does not exist gets
        return 404, json.loads(json.dumps(absent[1]).replace("no-such-session", sid))

    absent = await export(stack, "no-such-session", other)
    assert absent[0] == 404 and absent[1]["error"]["code"] == "not_found"
    for fmt in ("verbose_json", "srt", "vtt", "text"):
        assert await export(stack, sid, other, fmt) == missing(sid)

    key = run.started["resume_token"]
    refused = await resume(stack, sid, key, other)  # even holding the resume token
    assert refused["type"] == "error" and refused["code"] == "unknown_session", refused
    assert (await resume(stack, sid, key, owner))["type"] == "started"

    # An upload is the uploader's too (its events name the session).
    form = aiohttp.FormData()
    form.add_field("file", encode_audio(np.frombuffer(pcm, "<i2"), rate, "mp3", "libmp3lame"), filename="a.mp3")
    form.add_field("stream", "true")
    async with aiohttp.ClientSession() as http, http.post(
            f"{stack.http}/v1/transcriptions", data=form, headers={"Authorization": f"Bearer {owner}"}) as resp:
        assert resp.status == 200
        events = [json.loads(line[6:]) for line in (await resp.text()).split("\n") if line.startswith("data: ")]
    fid = next(e["session_id"] for e in events if "session_id" in e)
    finals = [e["text"] for e in events if e.get("type") == "final" and e["text"]]
    assert (await export(stack, fid, other)) == missing(fid)
    status, body = await export(stack, fid, owner)
    assert status == 200 and [s["text"] for s in body["segments"]] == finals
