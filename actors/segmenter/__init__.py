"""Segmenter actor: client audio → VAD-endpointed utterances (partial windows + finals)."""
