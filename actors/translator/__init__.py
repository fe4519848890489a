"""Translator actor: text of finals (and optionally partials) into each listener language."""
