"""`tolk status`: streams, durable consumers (lag), KV buckets, actor health, STT pools and the translation pairs
served (from the translators' heartbeats, read as `GET /v1/languages` reads them), from NATS.

The same numbers the exporter gives Prometheus, for a terminal: is anything behind, is anything down.
"""

from __future__ import annotations

import re
import time
from typing import Any

from actors.runtime.actor import heartbeats
from actors.runtime.bus import Bus, NatsAuth
from schemas.translation import summary

ACTORS = ("edge", "segmenter", "stt", "translator", "fanout", "ingest", "exporter")


async def collect(url: str, auth: NatsAuth | None = None) -> dict[str, Any]:
    bus = await Bus.connect(url, name="tolk-status", first_attempt_s=5, auth=auth)
    try:
        streams, buckets = [], []
        for info in await bus.js.streams_info():
            name = info.config.name or ""
            if name.startswith("KV_"):
                buckets.append({"bucket": name[3:], "entries": info.state.messages})
                continue
            consumers = [
                {"consumer": c.config.durable_name, "pending": c.num_pending or 0,
                 "ack_pending": c.num_ack_pending or 0, "redelivered": c.num_redelivered or 0}
                for c in await bus.js.consumers_info(name) if c.config.durable_name
            ]
            streams.append({"stream": name, "messages": info.state.messages, "bytes": info.state.bytes,
                            "consumers": sorted(consumers, key=lambda c: str(c["consumer"]))})
        now = time.time()
        beats = await heartbeats(bus)
        actors = [{"actor": beat.actor, "instance": beat.instance, "pid": beat.pid, "ready": beat.ready,
                   "up_s": round(now - beat.started_at), "metrics_port": beat.metrics_port, "info": beat.info}
                  for beat in beats]
        translation = summary(b.translation for b in beats if b.actor == "translator" and b.ready and b.translation)
        return {"nats": url, "streams": sorted(streams, key=lambda s: str(s["stream"])),
                "kv": sorted(buckets, key=lambda b: str(b["bucket"])),
                "actors": sorted(actors, key=lambda a: (a["actor"], a["instance"])),
                "stt_pools": stt_pools(actors, streams), "translation": translation}
    finally:
        await bus.close()


POOL_DURABLE = re.compile(r"^stt-(final|partial)-([a-z0-9-]+)$")


def stt_pools(actors: list[dict[str, Any]], streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per STT pool: its model and languages (from its instances' heartbeats), instances ready / down, and the
    lag of its two durables. A pool with durables and no instance shows up too: nothing serves it."""
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str) -> dict[str, Any]:
        return rows.setdefault(name, {"pool": name, "model": "", "languages": "", "ready": 0, "down": 0,
                                      "final_pending": 0, "final_ack_pending": 0, "partial_pending": 0})

    for a in actors:
        if a["actor"] == "stt" and a["info"].get("pool"):
            r = row(a["info"]["pool"])
            r["model"], r["languages"] = a["info"].get("model", ""), a["info"].get("languages", "")
            r["ready" if a["ready"] else "down"] += 1
    for s in streams:
        for c in s["consumers"] if s["stream"] == "TOLK_SEGMENTS" else []:
            m = POOL_DURABLE.match(str(c["consumer"]))
            if m and m[1] == "final":
                r = row(m[2])
                r["final_pending"], r["final_ack_pending"] = c["pending"], c["ack_pending"]
            elif m:
                row(m[2])["partial_pending"] = c["pending"]
    return [rows[name] for name in sorted(rows)]


def all_ready(status: dict[str, Any]) -> bool:
    """Every actor, and every STT pool, has a ready instance (`tolk status` exits 0 only then)."""
    ready = {a["actor"] for a in status["actors"] if a["ready"]}
    return set(ACTORS) <= ready and all(p["ready"] for p in status.get("stt_pools", []))


def render(status: dict[str, Any]) -> str:
    out = [f"NATS {status['nats']}", "", "ACTOR        READY  DOWN  INSTANCES"]
    by_actor: dict[str, list[dict[str, Any]]] = {}
    for a in status["actors"]:
        by_actor.setdefault(a["actor"], []).append(a)
    for name in sorted(set(ACTORS) | set(by_actor)):
        rows = by_actor.get(name, [])
        ready = sum(1 for a in rows if a["ready"])
        where = ", ".join(f"{a['instance']} (up {a['up_s']}s" + (f", :{a['metrics_port']}" if a["metrics_port"]
                                                                    else "")
                          + (f", pool {a['info']['pool']}" if a.get("info", {}).get("pool") else "") + ")"
                          for a in rows) or "-"
        flag = "" if ready else "   <- none ready"
        out.append(f"{name:<12} {ready:>5} {len(rows) - ready:>5}  {where}{flag}")
    if status.get("stt_pools"):
        out += ["", "STT POOL     MODEL                LANGUAGES     READY  DOWN  FINAL LAG  ACK-PEND  PARTIAL LAG"]
        for p in status["stt_pools"]:
            flag = "" if p["ready"] else "   <- none ready"
            out.append(f"{p['pool']:<12} {p['model'] or '?':<20} {p['languages'] or '?':<12} {p['ready']:>6} "
                       f"{p['down']:>5} {p['final_pending']:>10} {p['final_ack_pending']:>9} "
                       f"{p['partial_pending']:>12}{flag}")
    out += translation_lines(status.get("translation"))
    out += ["", "STREAM / CONSUMER                     MESSAGES    PENDING  ACK-PEND  REDELIV"]
    for s in status["streams"]:
        out.append(f"{s['stream']:<36} {s['messages']:>9}   ({s['bytes'] / 2**20:.1f} MiB)")
        for c in s["consumers"]:
            out.append(f"  {c['consumer']:<34} {'':>9} {c['pending']:>10} {c['ack_pending']:>9} "
                       f"{c['redelivered']:>8}")
    out += ["", "KV BUCKET       ENTRIES"] + [f"{b['bucket']:<18} {b['entries']:>7}" for b in status["kv"]]
    return "\n".join(out)


def translation_lines(t: dict[str, Any] | None) -> list[str]:
    """Engines up or down (and why), then the pairs served and those asked for or listed that are not."""
    if not t or not t["translators"]:
        return []
    out = ["", f"TRANSLATION ENGINE  UP  DOWN  ({t['translators']} translator(s), pivot {t['pivot'] or 'none'})"]
    for e in t["engines"]:
        retry = f"; retried every {e['retry_s']:.0f} s" if e["retry_s"] else ""
        out.append(f"{e['name']:<18} {e['up']:>3} {e['down']:>5}  {e['detail']}{retry}")

    def pair(p: dict[str, Any]) -> str:
        quality = f", chrF {p['quality']:.0f}" if p["quality"] is not None else ""
        return f"{p['source']}→{p['target']} ({p['engine'] or '-'}{quality})"

    served = [pair(p) for p in t["pairs"] if p["available"]]
    out.append("pairs served:  " + (", ".join(served) or "none")
               + ("; any other its hub publishes" if t["any_pair"] else ""))
    for p in (p for p in t["pairs"] if not p["available"]):
        out.append(f"unavailable:   {pair(p)}: {p['detail']}")
    return out
