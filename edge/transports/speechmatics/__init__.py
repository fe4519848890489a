"""Speechmatics' realtime APIs: the realtime session at `/v2` and `/v2/<language>` (realtime.py) and the
voice-agent endpoint at `/v2/agent` (agent.py), which is that session with segments and turns."""

from __future__ import annotations

from aiohttp import web

from edge.core.services import Services
from edge.transports.speechmatics import agent, realtime


def routes(services: Services) -> list[web.RouteDef]:
    """`/v2/agent` first: `/v2/<language>` would take it."""
    return [*agent.routes(services), *realtime.routes(services)]
