"""`tolk status`: streams, durable consumers (lag), KV buckets and actor health, read from NATS.

The same numbers the exporter gives Prometheus, for a terminal: is anything behind, is anything down.
"""

from __future__ import annotations

import time
from typing import Any

from actors.runtime.actor import heartbeats
from actors.runtime.bus import Bus, NatsAuth

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
        actors = [{"actor": beat.actor, "instance": beat.instance, "pid": beat.pid, "ready": beat.ready,
                   "up_s": round(now - beat.started_at), "metrics_port": beat.metrics_port}
                  for beat in await heartbeats(bus)]
        return {"nats": url, "streams": sorted(streams, key=lambda s: str(s["stream"])),
                "kv": sorted(buckets, key=lambda b: str(b["bucket"])),
                "actors": sorted(actors, key=lambda a: (a["actor"], a["instance"]))}
    finally:
        await bus.close()


def render(status: dict[str, Any]) -> str:
    out = [f"NATS {status['nats']}", "", "ACTOR        READY  DOWN  INSTANCES"]
    by_actor: dict[str, list[dict[str, Any]]] = {}
    for a in status["actors"]:
        by_actor.setdefault(a["actor"], []).append(a)
    for name in sorted(set(ACTORS) | set(by_actor)):
        rows = by_actor.get(name, [])
        ready = sum(1 for a in rows if a["ready"])
        where = ", ".join(f"{a['instance']} (up {a['up_s']}s" + (f", :{a['metrics_port']}" if a["metrics_port"]
                                                                    else "") + ")" for a in rows) or "-"
        flag = "" if ready else "   <- none ready"
        out.append(f"{name:<12} {ready:>5} {len(rows) - ready:>5}  {where}{flag}")
    out += ["", "STREAM / CONSUMER                     MESSAGES    PENDING  ACK-PEND  REDELIV"]
    for s in status["streams"]:
        out.append(f"{s['stream']:<36} {s['messages']:>9}   ({s['bytes'] / 2**20:.1f} MiB)")
        for c in s["consumers"]:
            out.append(f"  {c['consumer']:<34} {'':>9} {c['pending']:>10} {c['ack_pending']:>9} "
                       f"{c['redelivered']:>8}")
    out += ["", "KV BUCKET       ENTRIES"] + [f"{b['bucket']:<18} {b['entries']:>7}" for b in status["kv"]]
    return "\n".join(out)
