"""Tolk's own API: the live protocol on `/v1/listen`, channel listeners, files, probes and metrics."""
