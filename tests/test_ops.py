"""Operations against a real `tolk up`: every actor's /metrics and probes, metrics that move when a session
runs (and pass `promtool check metrics`), `tolk status`, and `tolk tap` decoding real pipeline messages."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from actors.tools.tap import describe, parse_since
from loadtest.client import stream_pcm
from loadtest.speech import clips
from schemas import ClientResult, ResultKind, encode
from tests.conftest import Running

pytestmark = pytest.mark.e2e
on_loop = pytest.mark.asyncio(loop_scope="session")

TOLK = str(Path(sys.executable).parent / "tolk")
PIPELINE = ("segmenter", "stt", "translator", "diarizer", "fanout", "ingest", "exporter")


def data_dir(tolk: Running) -> str:
    return str(Path(tolk.log).parent / "data")


def tolk_cmd(tolk: Running, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOLK, *args, "--data-dir", data_dir(tolk)], capture_output=True, text=True,
                          timeout=timeout, check=False)


def status(tolk: Running) -> dict[str, Any]:
    out = tolk_cmd(tolk, "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def scrape_all(tolk: Running) -> dict[str, str]:
    ports = {a["actor"]: a["metrics_port"] for a in status(tolk)["actors"] if a["ready"]}
    out = {"edge": get(f"{tolk.http}/metrics")[1]}
    for actor in PIPELINE:
        code, text = get(f"http://127.0.0.1:{ports[actor]}/metrics")
        assert code == 200
        out[actor] = text
    return out


def promtool_check_metrics(text: str) -> tuple[int, str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus (.ci/run does)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    return check.returncode, check.stdout + check.stderr


def test_status_lists_every_actor_stream_and_consumer(tolk: Running) -> None:
    st = status(tolk)
    ready = {a["actor"] for a in st["actors"] if a["ready"]}
    assert ready >= {"edge", *PIPELINE}
    assert all(a["metrics_port"] > 0 for a in st["actors"])
    streams = {s["stream"]: s for s in st["streams"]}
    assert {"TOLK_AUDIO", "TOLK_SEGMENTS", "TOLK_TRANSCRIPTS", "TOLK_RESULTS", "TOLK_CAPTIONS"} <= set(streams)
    consumers = {c["consumer"] for c in streams["TOLK_SEGMENTS"]["consumers"]}
    assert {"stt-final-default", "stt-partial-default"} <= consumers  # conftest: one STT pool, TOLK_MODEL's
    (pool,) = st["stt_pools"]
    assert (pool["pool"], pool["model"], pool["languages"], pool["ready"]) == ("default", "tiny.en", "*", 1)
    assert next(a for a in st["actors"] if a["actor"] == "stt")["info"]["pool"] == "default"
    assert {b["bucket"] for b in st["kv"]} >= {"tolk_actors", "tolk_sessions", "tolk_listeners"}
    table = tolk_cmd(tolk, "status").stdout
    assert "translator" in table and "TOLK_SEGMENTS" in table and "stt-final-default" in table
    assert re.search(r"^default\s+tiny\.en\s+\*\s+1\s+0\s", table, re.M), table
    bad = subprocess.run([TOLK, "status", "--nats-url", "nats://127.0.0.1:1"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode == 1 and "tolk status:" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr  # no screen of reconnect warnings before it


def test_every_actor_serves_probes(tolk: Running) -> None:
    for a in status(tolk)["actors"]:
        if a["actor"] == "edge":
            continue
        base = f"http://127.0.0.1:{a['metrics_port']}"
        assert get(f"{base}/healthz")[0] == 200
        code, body = get(f"{base}/readyz")
        assert code == 200, body
        assert json.loads(body)["checks"] == {"nats": True, "started": True}
        code, body = get(f"{base}/metrics")
        version = subprocess.run([TOLK, "--version"], capture_output=True, text=True, timeout=60).stdout.split()[1]
        assert re.search(rf'^tolk_build_info{{.*version="{re.escape(version)}"', body, re.M), a["actor"]


def test_status_is_a_health_check_and_bad_settings_are_one_line(nats_url: str) -> None:
    """`tolk status` exits 3 while an actor has no ready instance (here: a NATS with no actors at all), and a bad
    setting or an unreachable NATS is one line on stderr with a non-zero exit, never a traceback."""
    subprocess.run([TOLK, "nats", "apply", "--nats-url", nats_url], capture_output=True, timeout=60, check=True)
    down = subprocess.run([TOLK, "status", "--nats-url", nats_url], capture_output=True, text=True, timeout=60)
    assert down.returncode == 3 and "none ready" in down.stdout, (down.returncode, down.stderr)
    for args, env, code in [
        (["up", "--data-dir", "/nonexistent"], {"TOLK_NATS_PORT": "abc"}, 2),
        (["nats", "apply", "--replicas", "x"], {}, 2),
        (["nats", "apply", "--nats-url", "nats://127.0.0.1:1"], {}, 1),
        (["tap", "tolk.>", "--nats-url", "nats://127.0.0.1:1"], {}, 1),
    ]:
        out = subprocess.run([TOLK, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env})
        assert out.returncode == code and "Traceback" not in out.stderr, (args, out.stderr)
        *usage, last = out.stderr.strip().splitlines()
        assert last.startswith("tolk ") and ("abc" in last or "'x'" in last or "nats://127.0.0.1:1" in last), last
        assert all(line.startswith(("usage:", " ")) for line in usage), out.stderr  # argparse's usage, then it


@on_loop
async def test_metrics_move_when_a_session_runs_and_pass_promtool(tolk: Running) -> None:
    clip = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    pcm, rate = clip.pcm16()
    before = scrape_all(tolk)
    run = await stream_pcm(tolk.ws, pcm, rate, pace=4.0)
    assert run.done and run.finals
    await asyncio.sleep(6)  # the exporter refreshes every 5 s
    after = scrape_all(tolk)

    def grew(proc: str, name: str, **labels: str) -> float:
        return metric(after[proc], name, **labels) - metric(before[proc], name, **labels)

    seconds = len(pcm) / 2 / rate
    assert grew("edge", "tolk_sessions_started_total", kind="mic") == 1
    assert abs(grew("segmenter", "tolk_audio_seconds_total") - seconds) < 0.5
    assert grew("segmenter", "tolk_segments_total", kind="final") >= len(run.finals)
    assert grew("stt", "tolk_stt_latency_seconds_count", kind="final") >= len(run.finals)
    assert grew("stt", "tolk_stt_audio_seconds_total", kind="final") > seconds * 0.5
    assert grew("stt", "tolk_stt_real_time_factor_count", kind="final") >= 1
    assert grew("fanout", "tolk_result_latency_seconds_count", kind="final") == len(run.finals)
    assert grew("fanout", "tolk_results_total", kind="final") == len(run.finals)
    assert grew("translator", "tolk_translation_latency_seconds_count") >= len(run.finals)
    assert grew("stt", "tolk_messages_total", actor="stt", consumer="stt-final-default") >= len(run.finals)
    assert grew("stt", "tolk_stt_audio_seconds_total", kind="final", pool="default") > seconds * 0.5
    assert metric(after["stt"], "tolk_stt_pool_info", pool="default", model="tiny.en", languages="*") == 1
    for actor in PIPELINE:
        assert metric(after[actor], "tolk_actor_ready", actor=actor) == 1
    assert metric(after["exporter"], "tolk_actor_instances", actor="stt", ready="true") == 1
    assert "tolk_jetstream_consumer_pending_messages{" in after["exporter"]
    assert metric(after["exporter"], "tolk_jetstream_consumer_pending_messages", consumer="stt-final-default") == 0
    assert metric(after["exporter"], "tolk_stt_pool_instances", pool="default", ready="true") == 1
    assert metric(after["exporter"], "tolk_jetstream_stream_messages", stream="TOLK_RESULTS") > 0

    for actor, text in after.items():
        code, report = promtool_check_metrics(text)
        assert code == 0, f"{actor}: {report}"


@on_loop
async def test_tap_decodes_live_and_replayed_pipeline_messages(tolk: Running) -> None:
    clip = next(c for c in clips("en") if c.name.startswith("en_jfk"))
    pcm, rate = clip.pcm16()
    live = await asyncio.create_subprocess_exec(
        TOLK, "tap", "tolk.>", "--data-dir", data_dir(tolk), "--idle-exit", "8",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(2)  # subscribed before the session starts
    run = await stream_pcm(tolk.ws, pcm, rate, pace=4.0, session_id="tap-check")
    out, err = await asyncio.wait_for(live.communicate(), 60)
    assert live.returncode == 0, err.decode()
    lines = [json.loads(x) for x in out.decode().splitlines()]
    mine = [x for x in lines if x["subject"] == "tolk.session.tap-check.out"]
    assert mine and all(x["type"] == "ClientResult" for x in mine)
    finals = [x["data"]["text"] for x in mine if x["data"]["kind"] == "final"]
    assert finals == [r["text"] for r in run.finals]
    by_type = {x["type"] for x in lines if x["subject"].endswith(".tap-check")}
    assert by_type == {"AudioChunk", "Segment", "Transcript"}  # audio, segments, transcripts and results
    seg = next(x for x in lines if x["type"] == "Segment" and x["subject"].endswith(".tap-check"))
    assert seg["data"]["audio"]["bytes"] > 0  # a size, not megabytes of base64

    replay = tolk_cmd(tolk, "tap", "tolk.transcript.*.tap-check", "--all", "--idle-exit", "3")
    assert replay.returncode == 0, replay.stderr
    rows = [json.loads(x) for x in replay.stdout.splitlines()]
    assert rows and all(r["stream"] == "TOLK_TRANSCRIPTS" and r["type"] == "Transcript" for r in rows)
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    kinds = [r["data"]["kind"] for r in rows]
    # Stream order is arrival order: the segmenter's END can land before STT's last final.
    assert kinds.count("end") == 1 and kinds.count("final") == len(run.finals)
    assert "country" in " ".join(r["data"]["text"] for r in rows if r["data"]["kind"] == "final").lower()

    since = tolk_cmd(tolk, "tap", "tolk.result.*.tap-check", "--since", "10m", "--count", "2")
    assert since.returncode == 0, since.stderr
    assert [json.loads(x)["type"] for x in since.stdout.splitlines()] == ["Transcript", "Transcript"]

    queue = tolk_cmd(tolk, "tap", "tolk.segment.final.*.*.tap-check", "--all", "--count", "1")
    assert queue.returncode == 1 and "work queue" in queue.stderr and "Traceback" not in queue.stderr


def test_tap_decoding_rules() -> None:
    good = encode(ClientResult(session_id="s", utterance_id=1, seq=3, kind=ResultKind.FINAL, text="hallo"))
    assert describe("tolk.captions.ch=radio", good)["data"]["text"] == "hallo"
    bad = describe("tolk.result.0.s", b"\xc1not msgpack")
    assert bad["type"] == "Transcript" and "error" in bad
    assert describe("some.other.subject", b'{"a": 1}') == {"type": "unknown", "data": {"a": 1}}
    frame = describe("tolk.channel.radio.audio", struct.pack("<d", 12.5) + b"mp3")
    assert frame["data"] == {"stream_time": 12.5, "mp3": {"bytes": 3}}
    assert parse_since("10m", now=1_000_000).timestamp() == 1_000_000 - 600
    with pytest.raises(ValueError):
        parse_since("yesterday")
