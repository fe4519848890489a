"""The edge's Prometheus metrics (`GET /metrics`), in a registry of its own (one per Edge instance)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)

if TYPE_CHECKING:
    from edge.app import Edge


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connected_clients = Gauge("connected_clients", "Open WebSocket connections (streamers and listeners).",
                                       registry=self.registry)
        self.open_streams = Gauge("open_streams", "Streams served by this edge: microphone sessions, and channels "
                                  "with at least one listener here, by source language.", ["language"],
                                  registry=self.registry)
        self.listeners = Gauge("channel_listeners", "Channel listeners connected to this edge.", ["channel"],
                               registry=self.registry)
        self.delivery_lag = Histogram(
            "channel_delivery_lag_seconds", "From fan-out publishing a channel result to this edge writing it to a "
            "listener's socket.", buckets=LAG_BUCKETS, registry=self.registry)
        self._languages: set[str] = set()
        self._channels: set[str] = set()

    def refresh(self, edge: Edge) -> None:
        """Gauges are read off the edge's live state at scrape time, so they can never drift."""
        langs: Counter[str] = Counter(s.start.language for s in edge.sessions.values() if s.start is not None)
        per_channel: Counter[str] = Counter()
        for listener in edge.listeners:
            if listener.channel is not None:
                per_channel[listener.channel.name] += 1
        channel_langs = {x.channel.name: x.channel.language for x in edge.listeners if x.channel is not None}
        langs.update(channel_langs.values())
        for lang in self._languages - set(langs):
            self.open_streams.labels(lang).set(0)
        for lang, n in langs.items():
            self.open_streams.labels(lang).set(n)
        for name in self._channels - set(per_channel):
            self.listeners.labels(name).set(0)
        for name, n in per_channel.items():
            self.listeners.labels(name).set(n)
        self._languages |= set(langs)
        self._channels |= set(per_channel)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
