"""Per-session source-language lock for `language: "auto"`: detect until confident, then stop guessing.

Whisper's language detection on a short utterance flips easily (a name, a cough); once a session's
language is known it is fixed, so partials and finals stop wobbling and the translator gets a stable
source. A long pause re-opens detection: the next speaker may use another language.
Pure logic (no NATS, no model), per STT process: with several STT replicas each keeps its own view.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _State:
    language: str = ""
    locked: bool = False
    streak: int = 0  # consecutive confident finals agreeing on `language`
    last_end: float = 0.0  # stream seconds


class LanguageLock:
    def __init__(self, lock_prob: float = 0.8, lock_after: int = 2, reopen_pause_s: float = 10.0,
                 max_sessions: int = 10000) -> None:
        self.lock_prob = lock_prob
        self.lock_after = lock_after
        self.reopen_pause_s = reopen_pause_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, _State] = OrderedDict()

    def language_for(self, session_id: str, requested: str, speech_start: float) -> str:
        """What to decode with: the client's language, the locked one, or "auto" (detect)."""
        if requested != "auto":
            return requested
        state = self._sessions.get(session_id)
        if state is None or not state.locked:
            return "auto"
        if speech_start - state.last_end >= self.reopen_pause_s:
            self._sessions[session_id] = _State(last_end=state.last_end)  # long pause: detect again
            return "auto"
        return state.language

    def observe(self, session_id: str, language: str, probability: float, end: float) -> None:
        """Feed a final's detected language (probability 0 when it was not detected)."""
        state = self._sessions.get(session_id)
        if state is None:
            state = self._sessions[session_id] = _State()
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(session_id)
        state.last_end = max(state.last_end, end)
        if state.locked or probability <= 0:
            return
        if probability >= self.lock_prob and language == state.language:
            state.streak += 1
        elif probability >= self.lock_prob:
            state.language, state.streak = language, 1
        else:
            state.streak = 0
        if state.streak >= self.lock_after:
            state.locked = True

    def locked(self, session_id: str) -> str | None:
        state = self._sessions.get(session_id)
        return state.language if state is not None and state.locked else None

    def forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
