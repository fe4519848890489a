"""Tolk's actors: one sub-package per actor, plus the shared runtime and the `tolk` CLI."""
