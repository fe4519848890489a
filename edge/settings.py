"""The edge's settings (env `TOLK_*`, docs/configuration.md), the limits every session runs under, and TLS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field


@dataclass
class EdgeSettings:
    """Env: TOLK_HOST, TOLK_PORT, TOLK_MAX_FRAME_BYTES, ... (docs/configuration.md)."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_frame_bytes: int = 1 << 20
    idle_timeout_s: float = 30.0
    stop_timeout_s: float = 60.0  # after `stop`, how long to wait for the last final
    result_queue: int = 256
    ws_heartbeat_s: float = 20.0
    sse_ping_s: float = 15.0  # a `: ping` comment on event streams silent this long (proxies cut idle ones)
    shutdown_grace_s: float = 5.0
    max_upload_bytes: int = 200 * 1024 * 1024  # file transcription: larger uploads get 413
    upload_dir: str = ""  # where uploads wait while being transcribed (default: the system temp dir)
    file_pace: float = 10.0  # files enter the pipeline at most this many times faster than real time
    file_result_timeout_s: float = 120.0  # a file job fails (504) if the pipeline is silent this long
    file_jobs: int = 4  # files transcribed at once by this edge; more get 503 "busy"
    tls_cert: str = ""  # PEM certificate (chain) file: with tls_key, the edge serves only HTTPS / WSS
    tls_key: str = ""  # its PEM private key file
    max_sessions: int = 0  # microphone sessions on this edge at once (0: no limit); more get `overloaded` (1013)
    max_sessions_per_token: int = 0  # microphone sessions at once per API token on this edge (0: no limit)
    # A new session is refused while one more session at its STT pool's measured cost per session, on top of the
    # pool's final-lane busy or of this edge's live sessions' cost, would pass this per replica (0: never).
    admit_final_busy: float = 0.8
    shed_backlog: int = 100  # finals waiting for the session's STT pool (stt-final-<pool> lag): refuse above this
    max_session_s: float = 14400.0  # a session's longest life, resumes included (0: no limit)
    resume_grace_s: float = 30.0  # a dropped client's session waits this long for a resume before it is ended
    api_tokens: str = field(default="", repr=False)  # comma-separated; with token_secret empty too: no authentication
    token_secret: str = field(default="", repr=False)  # signs expiring tokens (`tolk token`); empty: none

    @property
    def limits(self) -> Limits:
        return Limits(self.max_frame_bytes, self.idle_timeout_s, self.stop_timeout_s, self.result_queue,
                      self.max_session_s)


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int
    idle_timeout_s: float
    stop_timeout_s: float
    result_queue: int
    max_session_s: float = 0.0  # from the session's creation, across resumes (0: no limit)


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """Server TLS (1.2 and up) from PEM files; a half-configured or unreadable pair stops the edge at start."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise SystemExit("edge: TLS needs both TOLK_TLS_CERT and TOLK_TLS_KEY")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"edge: cannot load TLS certificate {cert!r} / key {key!r}: {exc}") from None
    return ctx
