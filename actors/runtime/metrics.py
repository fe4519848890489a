"""Metrics every actor process exposes (on the process-wide prometheus_client registry).

Actor-specific metrics live next to their actor; these are the ones the runtime itself can count: what
each JetStream consumer handled, how much of it was a redelivery, and errors by code. The `actor` label
is fixed per process by `set_actor`, so dashboards can sum across replicas by actor.
"""

from __future__ import annotations

import platform

from prometheus_client import Counter, Gauge, Info

BUILD = Info("tolk_build", "This process's Tolk version and Python (tolk_build_info).")
ACTOR_READY = Gauge("tolk_actor_ready", "1 while this actor process is ready (models loaded, consumers bound).",
                    ["actor"])
MESSAGES = Counter("tolk_messages", "JetStream messages handled, by durable consumer.", ["actor", "consumer"])
REDELIVERIES = Counter("tolk_redeliveries", "JetStream messages received again (delivery count > 1): work a "
                       "crashed or slow replica left unacknowledged.", ["actor", "consumer"])
ERRORS = Counter("tolk_errors", "Internal errors by code (the message is nak'ed and retried).", ["actor", "code"])

_actor = "unknown"


def set_actor(name: str) -> None:
    global _actor
    _actor = name
    BUILD.info({"version": version(), "python": platform.python_version(), "actor": name})


def version() -> str:
    """The installed Tolk's version (`tolk --version`, tolk_build_info)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("tolk")
    except PackageNotFoundError:
        return "unknown"


def actor() -> str:
    return _actor


def count_delivery(consumer: str, num_delivered: int) -> None:
    MESSAGES.labels(_actor, consumer).inc()
    if num_delivered > 1:
        REDELIVERIES.labels(_actor, consumer).inc()


def count_error(code: str) -> None:
    ERRORS.labels(_actor, code).inc()
