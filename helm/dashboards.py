#!/usr/bin/env python3
"""Build Tolk's Grafana dashboards as JSON: `python helm/dashboards.py` writes them, `--check` compares.

Two dashboards, both with a `datasource` (Prometheus) and a `namespace` variable:

- `tolk-overview`: what a user feels (clients, streams, latency) and whether the pipeline keeps up (consumer
  lag, errors, dead letters, redeliveries).
- `tolk-actors`: one row per actor with its own panels, for finding which stage is slow or failing.

Plain dicts, no dependencies: a helper per panel type, and `layout` places panels left to right on Grafana's
24-column grid and numbers them. The output is sorted and indented so diffs of the committed files read well;
`tests/test_observability.py` runs every query through promtool and checks the files are up to date.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "tolk" / "files" / "dashboards"

Json = dict[str, Any]
Steps = Sequence[tuple[float | None, str]]  # threshold steps: (from value, colour); the first is from None

DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
GRID_COLUMNS = 24

# ---------------------------------------------------------------- PromQL helpers


def sel(metric: str, **labels: str) -> str:
    """`metric{namespace="$namespace",k="v",...}`; a value starting with `~` is a regex match (`=~`)."""
    matchers = ['namespace="$namespace"']
    for key, value in labels.items():
        matchers.append(f'{key}=~"{value[1:]}"' if value.startswith("~") else f'{key}="{value}"')
    return f"{metric}{{{','.join(matchers)}}}"


def _by(labels: Sequence[str]) -> str:
    return f"sum by ({', '.join(labels)}) " if labels else "sum"


def rate(metric: str, by: Sequence[str] = (), **labels: str) -> str:
    """Per-second rate of a counter, summed over pods (and split by `by`)."""
    return f"{_by(by)}(rate({sel(metric, **labels)}[{RATE}]))"


def increase(metric: str, window: str, by: Sequence[str] = (), **labels: str) -> str:
    return f"{_by(by)}(increase({sel(metric, **labels)}[{window}]))"


def quantile(q: float, histogram: str, by: Sequence[str] = (), **labels: str) -> str:
    """The q-quantile of a histogram over all pods (`histogram` without its `_bucket` suffix)."""
    return f"histogram_quantile({q}, {_by(['le', *by])}(rate({sel(histogram + '_bucket', **labels)}[{RATE}])))"


def gauge(metric: str, by: Sequence[str] = (), agg: str = "sum", **labels: str) -> str:
    group = f" by ({', '.join(by)})" if by else ""
    return f"{agg}{group} ({sel(metric, **labels)})"


# ---------------------------------------------------------------- panel helpers


def target(expr: str, legend: str = "__auto") -> Json:
    return {"datasource": DATASOURCE, "editorMode": "code", "expr": expr, "legendFormat": legend, "range": True}


def _targets(targets: Iterable[Json]) -> list[Json]:
    out = list(targets)
    for i, t in enumerate(out):
        t["refId"] = chr(ord("A") + i)
    return out


def _thresholds(steps: Steps) -> Json:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


OK: Steps = [(None, "green")]


def timeseries(title: str, description: str, targets: Iterable[Json], unit: str = "short", *, stack: bool = False,
               w: int = 12, h: int = 8, decimals: int | None = None) -> Json:
    defaults: Json = {
        "custom": {
            "drawStyle": "line",
            "fillOpacity": 20 if stack else 5,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        },
        "min": 0,
        "thresholds": _thresholds(OK),
        "unit": unit,
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": h, "w": w},
        "options": {
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": _targets(targets),
        "title": title,
        "type": "timeseries",
    }


def stat(title: str, description: str, expr: str, unit: str = "short", *,
         thresholds: Steps = OK, w: int = 4, h: int = 4) -> Json:
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": {"thresholds": _thresholds(thresholds), "unit": unit}, "overrides": []},
        "gridPos": {"h": h, "w": w},
        "options": {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        },
        "targets": _targets([target(expr, title)]),
        "title": title,
        "type": "stat",
    }


def row(title: str) -> Json:
    return {"collapsed": False, "gridPos": {"h": 1, "w": GRID_COLUMNS}, "panels": [], "title": title, "type": "row"}


def layout(panels: Sequence[Json]) -> list[Json]:
    """Number the panels and place them left to right, wrapping at 24 columns; a row starts a new line."""
    x = y = line_h = 0
    for panel_id, panel in enumerate(panels, start=1):
        pos = panel["gridPos"]
        if panel["type"] == "row" or x + pos["w"] > GRID_COLUMNS:
            x, y, line_h = 0, y + line_h, 0
        panel["id"] = panel_id
        pos.update(x=x, y=y)
        x, line_h = x + pos["w"], max(line_h, pos["h"])
        if panel["type"] == "row":
            x = GRID_COLUMNS  # nothing beside a row header
    return list(panels)


def dashboard(uid: str, title: str, description: str, panels: Sequence[Json]) -> Json:
    namespaces = "label_values(tolk_actor_ready, namespace)"
    return {
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": False, "includeVars": True, "keepTime": True, "tags": ["tolk"], "targetBlank": False,
                   "title": "Tolk", "type": "dashboards"}],
        "panels": layout(panels),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["tolk"],
        "templating": {"list": [
            {"current": {}, "hide": 0, "includeAll": False, "label": "Data source", "multi": False,
             "name": "datasource", "options": [], "query": "prometheus", "refresh": 1, "regex": "",
             "type": "datasource"},
            {"current": {}, "datasource": DATASOURCE, "definition": namespaces, "hide": 0, "includeAll": False,
             "label": "Namespace", "multi": False, "name": "namespace", "options": [],
             "query": {"query": namespaces, "refId": "namespace"}, "refresh": 2, "regex": "", "sort": 1,
             "type": "query"},
        ]},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ---------------------------------------------------------------- shared panels

LATENCY_STEPS: Steps = [(None, "green"), (1, "yellow"), (2, "red")]


def latency_panel(kind: str) -> Json:
    return timeseries(
        f"{kind.capitalize()} result latency", f"End of speech to the {kind} result published to the client subject "
        "(fan-out; the server's share of end-to-end latency). Alert: p95 final > 2 s.",
        [target(quantile(q, "tolk_result_latency_seconds", kind=kind), f"p{round(q * 100)}") for q in (0.5, 0.95)],
        "s")


def errors_panel() -> Json:
    return timeseries(
        "Errors/s by code", "Errors sent to clients (edge), translation errors (translator) and internal errors "
        "(every actor: the message is nak'ed and retried).",
        [target(rate("tolk_client_errors_total", ["code"]), "client {{code}}"),
         target(rate("tolk_translation_errors_total", ["code"]), "translation {{code}}"),
         target(rate("tolk_errors_total", ["actor", "code"]), "{{actor}} {{code}}")],
        "ops")


def consumer_lag_panel(w: int = 12) -> Json:
    return timeseries(
        "Consumer lag (pending messages)", "Messages in a stream not yet delivered to its durable consumer "
        "(exporter). Sustained growth means the actor behind it needs more replicas. Alert: > 1000 for 5 m.",
        [target(gauge("tolk_jetstream_consumer_pending_messages", ["stream", "consumer"], "max"), "{{consumer}}")],
        w=w)


def delivery_lag_panel(w: int = 12) -> Json:
    return timeseries(
        "Channel delivery lag", "Fan-out publishing a channel result to the edge writing it to a listener's socket. "
        "Alert: p99 > 0.5 s for 5 m.",
        [target(quantile(q, "channel_delivery_lag_seconds"), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "s", w=w)


def dead_letters_panel(w: int = 12) -> Json:
    return timeseries(
        "Dead letters", "Messages a consumer gave up on after its max deliveries (MAX_DELIVERIES advisories, counted "
        "by the exporter), per interval. Any is an alert.",
        [target(increase("tolk_dead_letters_total", RATE, ["stream", "consumer"]), "{{stream}} / {{consumer}}")],
        w=w, decimals=0)


# ---------------------------------------------------------------- tolk-overview


def overview() -> Json:
    panels = [
        row("Now"),
        stat("Connected clients", "Open WebSocket connections, all edges.", gauge("connected_clients")),
        stat("Open streams", "Microphone sessions and channels with listeners, all edges.", gauge("open_streams")),
        stat("Channel listeners", "Listeners on all channels, all edges.", gauge("channel_listeners")),
        stat("Final latency p95", "End of speech to the final result published, over the last interval.",
             quantile(0.95, "tolk_result_latency_seconds", kind="final"), "s", thresholds=LATENCY_STEPS),
        stat("Delivery lag p99", "Fan-out publish to a listener's socket.",
             quantile(0.99, "channel_delivery_lag_seconds"), "s",
             thresholds=[(None, "green"), (0.25, "yellow"), (0.5, "red")]),
        stat("Dead letters", "Messages given up on after max deliveries, in the selected time range.",
             increase("tolk_dead_letters_total", "$__range"), thresholds=[(None, "green"), (1, "red")]),
        row("Traffic"),
        timeseries("Connected clients", "Open WebSocket connections (streamers and listeners) per edge pod.",
                   [target(gauge("connected_clients", ["pod"]), "{{pod}}")], stack=True),
        timeseries("Open streams by language", "Microphone sessions plus channels with listeners, by source "
                   "language (a channel counts once per edge it has listeners on).",
                   [target(gauge("open_streams", ["language"]), "{{language}}")], stack=True),
        timeseries("Channel listeners", "Listeners per channel, the 10 busiest channels.",
                   [target(f"topk(10, {gauge('channel_listeners', ['channel'])})", "{{channel}}")], stack=True),
        timeseries("Sessions started/s", "New sessions by kind: microphone, file upload, channel listener.",
                   [target(rate("tolk_sessions_started_total", ["kind"]), "{{kind}}")], "ops"),
        row("Latency"),
        latency_panel("final"),
        latency_panel("partial"),
        timeseries("STT real-time factor", "Processing seconds per audio second, per model call, by STT pool and "
                   "lane; above 1 the pool falls behind real time.",
                   [target(quantile(q, "tolk_stt_real_time_factor", ["pool", "kind"]),
                           f"p{round(q * 100)} {{{{pool}}}} {{{{kind}}}}") for q in (0.5, 0.95)], "none"),
        delivery_lag_panel(),
        row("Pipeline health"),
        consumer_lag_panel(),
        errors_panel(),
        timeseries("Redeliveries/s", "JetStream messages received again (delivery count > 1): work a crashed or "
                   "slow replica left unacknowledged.",
                   [target(rate("tolk_redeliveries_total", ["actor", "consumer"]), "{{actor}} / {{consumer}}")],
                   "ops"),
        dead_letters_panel(),
    ]
    return dashboard("tolk-overview", "Tolk / Overview",
                     "Tolk at a glance: clients, streams, latency, consumer lag and errors.", panels)


# ---------------------------------------------------------------- tolk-actors


def runtime_panels(actor: str, consumers: bool = True, w: int = 6) -> list[Json]:
    """What every actor has: live instances (exporter, from heartbeats), messages handled and internal errors."""
    panels = [
        timeseries("Instances", f"Live {actor} processes by readiness, from their heartbeats (exporter).",
                   [target(gauge("tolk_actor_instances", ["ready"], "max", actor=actor), "ready={{ready}}")],
                   w=w, decimals=0),
    ]
    if consumers:
        panels += [
            timeseries("Messages/s", f"JetStream messages {actor} handled, by durable consumer.",
                       [target(rate("tolk_messages_total", ["consumer"], actor=actor), "{{consumer}}")], "ops", w=w),
            timeseries("Redeliveries/s", "Messages received with delivery count > 1.",
                       [target(rate("tolk_redeliveries_total", ["consumer"], actor=actor), "{{consumer}}")], "ops",
                       w=w),
        ]
    panels.append(timeseries("Internal errors/s", f"{actor} errors by code (nak'ed and retried).",
                             [target(rate("tolk_errors_total", ["code"], actor=actor), "{{code}}")], "ops", w=w))
    return panels


def quantiles(histogram: str, qs: Sequence[float] = (0.5, 0.95), by: Sequence[str] = ()) -> list[Json]:
    suffix = "".join(f" {{{{{label}}}}}" for label in by)
    return [target(quantile(q, histogram, by), f"p{round(q * 100)}{suffix}") for q in qs]


def actors() -> Json:
    panels = [
        row("edge"),
        *runtime_panels("edge", consumers=False),
        timeseries("Connected clients", "Open WebSocket connections per edge pod.",
                   [target(gauge("connected_clients", ["pod"]), "{{pod}}")], w=6),
        timeseries("Sessions started/s", "By kind: mic, file, listener.",
                   [target(rate("tolk_sessions_started_total", ["kind"]), "{{kind}}")], "ops", w=6),
        timeseries("Client errors/s", "Errors sent to clients, by error code.",
                   [target(rate("tolk_client_errors_total", ["code"]), "{{code}}")], "ops", w=8),
        delivery_lag_panel(w=8),
        timeseries("Delivery lag p99 by pod", "An edge short of CPU shows here first.",
                   [target(quantile(0.99, "channel_delivery_lag_seconds", ["pod"]), "{{pod}}")], "s", w=8),
        row("segmenter"),
        *runtime_panels("segmenter"),
        timeseries("Audio received (s/s)", "Audio seconds received per second, per segmenter pod: about the number of "
                   "live audio streams it serves.",
                   [target(rate("tolk_audio_seconds_total", ["pod"]), "{{pod}}")], "none"),
        timeseries("Segments/s", "Speech segments cut by the VAD, by kind.",
                   [target(rate("tolk_segments_total", ["kind"]), "{{kind}}")], "ops"),
        row("stt"),
        *runtime_panels("stt"),
        timeseries("Ready instances by pool", "Live, ready STT processes per STT pool (TOLK_STT_POOLS), from "
                   "heartbeats. A pool at 0 leaves its languages untranscribed. Alert: 0 for 2 m.",
                   [target(gauge("tolk_stt_pool_instances", ["pool"], "max", ready="true"), "{{pool}}")],
                   w=8, decimals=0),
        timeseries("Finals waiting by pool", "Lag of each pool's stt-final-<pool> consumer: scale that pool "
                   "(its Deployment, or KEDA on this number) when it grows.",
                   [target(gauge("tolk_jetstream_consumer_pending_messages", ["consumer"], "max",
                                 consumer="~stt-final-.*"), "{{consumer}}")], w=8),
        timeseries("Models by pool", "The model each pool's processes run (tolk_stt_pool_info).",
                   [target(gauge("tolk_stt_pool_info", ["pool", "model", "languages"], "count"),
                           "{{pool}}: {{model}} ({{languages}})")], w=8, decimals=0),
        timeseries("STT latency", "End of speech (segment end) to the transcript published, by pool and lane.",
                   quantiles("tolk_stt_latency_seconds", by=["pool", "kind"]), "s", w=8),
        timeseries("Batch size", "Segments per model call, by pool and lane.",
                   quantiles("tolk_stt_batch_size", by=["pool", "kind"]), "none", w=8),
        timeseries("Real-time factor", "Processing seconds / audio seconds per model call, by pool and lane.",
                   quantiles("tolk_stt_real_time_factor", by=["pool", "kind"]), "none", w=8),
        timeseries("Audio transcribed (s/s)", "Audio seconds transcribed per second, by pool and lane, per pod.",
                   [target(rate("tolk_stt_audio_seconds_total", ["pool", "pod", "kind"]), "{{pool}} {{pod}} {{kind}}")],
                   "none"),
        timeseries("Model calls/s", "Batched model calls per second (batch size histogram count), by pool.",
                   [target(rate("tolk_stt_batch_size_count", ["pool", "kind"]), "{{pool}} {{kind}}")], "ops"),
        timeseries("Lane utilisation", "Share of time each lane spends in model calls, per pod. A final lane near "
                   "100 % queues finals (latency grows): add replicas to that pool.",
                   [target(rate("tolk_stt_busy_seconds_total", ["pool", "pod", "kind"]), "{{pool}} {{pod}} {{kind}}")],
                   "percentunit"),
        timeseries("Final decode quality/s", "Finals decoded per second by the tier the finals lane's load chose: "
                   "full (beam 5, 30 s window), loaded (beam 5, fitted window), busy (greedy, the overload valve: "
                   "a pool that decodes many busy finals needs replicas; greedy costs words).",
                   [target(rate("tolk_stt_final_decodes_total", ["pool", "tier"]), "{{pool}} {{tier}}")],
                   "ops", stack=True),
        row("translator"),
        *runtime_panels("translator"),
        timeseries("Translations/s by pair", "Sentences translated, by source and target language.",
                   [target(rate("tolk_translations_total", ["source", "target"]), "{{source}} → {{target}}")],
                   "ops", stack=True, w=8),
        timeseries("Translation errors/s", "By code: unsupported_pair, translation_timeout, translation_failed, "
                   "unknown_source_language.",
                   [target(rate("tolk_translation_errors_total", ["code"]), "{{code}}")], "ops", w=8),
        timeseries("Translation latency", "Transcript received to result published.",
                   quantiles("tolk_translation_latency_seconds", (0.5, 0.95, 0.99)), "s", w=8),
        row("fanout"),
        *runtime_panels("fanout"),
        timeseries("Results/s", "Results published to client subjects, by kind.",
                   [target(rate("tolk_results_total", ["kind"]), "{{kind}}")], "ops"),
        timeseries("Result latency", "End of speech to result published (end-to-end server latency).",
                   quantiles("tolk_result_latency_seconds", by=["kind"]), "s"),
        row("ingest"),
        *runtime_panels("ingest", consumers=False, w=12),
        row("exporter (JetStream)"),
        timeseries("Stream messages", "Messages stored per stream.",
                   [target(gauge("tolk_jetstream_stream_messages", ["stream"], "max"), "{{stream}}")], w=8),
        timeseries("Stream bytes", "Bytes stored per stream.",
                   [target(gauge("tolk_jetstream_stream_bytes", ["stream"], "max"), "{{stream}}")], "bytes", w=8),
        timeseries("Ready instances by actor", "Live, ready processes per actor, from heartbeats. Alert: 0 for 2 m.",
                   [target(gauge("tolk_actor_instances", ["actor"], "max", ready="true"), "{{actor}}")],
                   w=8, decimals=0),
        consumer_lag_panel(w=8),
        timeseries("Ack pending", "Messages delivered to a consumer and not yet acknowledged (work in flight).",
                   [target(gauge("tolk_jetstream_consumer_ack_pending_messages", ["stream", "consumer"], "max"),
                           "{{consumer}}")], w=8),
        timeseries("Redelivered", "Messages a consumer is currently redelivering.",
                   [target(gauge("tolk_jetstream_consumer_redelivered_messages", ["stream", "consumer"], "max"),
                           "{{consumer}}")], w=8),
        dead_letters_panel(w=24),
    ]
    return dashboard("tolk-actors", "Tolk / Actors", "One row per actor: throughput, latency, errors, instances.",
                     panels)


# ---------------------------------------------------------------- files

DASHBOARDS = {"tolk-overview.json": overview, "tolk-actors.json": actors}


def render(board: Json) -> str:
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed files differ from the output")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output folder (default {OUT_DIR})")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path: Path = args.out / name
        text = render(build())
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("out of date (run `python helm/dashboards.py`): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
