"""`tolk desktop`: the caption overlay and voice typing (PySide6; `pip install '.[desktop]'`)."""
