"""The edge's Prometheus metrics (`GET /metrics`), in a registry of its own (one per Edge instance)."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from edge.core.registry import Registry

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)



class HotHistogram:
    """A histogram for the per-listener delivery path, observed ~10,000 times a second at 2,000 listeners.

    prometheus_client's Histogram takes a lock per bucket increment, which cost about a tenth of the edge's
    CPU there. The edge observes only from its event loop thread and scrapes from it too, so plain counters
    are enough; the exposition is the same (`_bucket{le}`, `_sum`, `_count`).
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last is +Inf
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le is inclusive: value == bound falls in it
        self.sum += value

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip([*self.bounds, float("inf")], self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


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
        self.delivery_lag = HotHistogram(
            "channel_delivery_lag_seconds", "From fan-out publishing a channel result to this edge writing it to a "
            "listener's socket.", LAG_BUCKETS, self.registry)
        self.sessions_started = Counter("tolk_sessions_started", "Sessions begun on this edge: microphone streams "
                                        "(and resumes of one), file transcriptions and channel listeners.",
                                        ["kind"], registry=self.registry)
        self.client_errors = Counter("tolk_client_errors", "Errors reported to clients, by error code.", ["code"],
                                     registry=self.registry)
        for kind in ("mic", "resume", "file", "listener"):
            self.sessions_started.labels(kind)
        self._languages: set[str] = set()
        self._channels: set[str] = set()

    def error(self, code: str) -> None:
        """An error reported to a client: counted here, by the one place each kind of connection reports from."""
        self.client_errors.labels(code).inc()

    def refresh(self, registry: Registry) -> None:
        """Gauges are read off the edge's live state at scrape time, so they can never drift."""
        langs: Tally[str] = Tally(s.language for s in registry.sessions.values() if s.language is not None)
        per_channel: Tally[str] = Tally()
        for listener in registry.listeners:
            if listener.channel is not None:
                per_channel[listener.channel.name] += 1
        channel_langs = {x.channel.name: x.channel.language for x in registry.listeners if x.channel is not None}
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
        """The edge's own metrics, then the runtime's (process-wide: consumer and readiness counters)."""
        return generate_latest(self.registry) + generate_latest(REGISTRY), CONTENT_TYPE_LATEST
