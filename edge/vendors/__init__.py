"""Vendor adapters at the edge: OpenAI's audio API and Deepgram's listen API over Tolk's own pipeline."""
