"""Diarizer actor: online speaker labels per session (issue #34)."""
