"""Ingest actor: pulls broadcast channels (live streams, files) into the pipeline, one run per channel."""
