"""Typed payloads of every NATS subject (see docs/architecture.md#subjects)."""

from __future__ import annotations

import enum

import msgspec

from schemas.translation import TranslationCatalog

SCHEMA_VERSION = 1


class Encoding(enum.StrEnum):
    PCM_S16LE = "pcm_s16le"
    PCM_F32LE = "pcm_f32le"

    @property
    def sample_width(self) -> int:
        return 2 if self is Encoding.PCM_S16LE else 4


class SegmentKind(enum.StrEnum):
    PARTIAL = "partial"
    FINAL = "final"


class Endpoint(enum.StrEnum):
    """Why an utterance ended (finals only)."""

    NONE = ""  # partials
    SILENCE = "silence"  # the speaker paused for endpoint_ms
    MAX_DURATION = "max_duration"  # no gap at all: cut at the quietest recent point of an over-long utterance
    GAP = "gap"  # continuous speech past soft_max_s: ended at its first short VAD gap
    STOP = "stop"  # the client sent stop (or vanished)
    FLUSH = "flush"  # the client asked for the final now (flush, Deepgram Finalize, ...): mid-speech if need be


class ResultKind(enum.StrEnum):
    PARTIAL = "partial"
    FINAL = "final"
    # Marks the end of a session's results: everything with a lower seq has been published.
    END = "end"
    # Speaker labels for a final already sent without them (the diarizer was late or away): same utterance_id,
    # its words with `speaker` set, and `speaker`. Only clients that asked for diarization get these.
    SPEAKERS = "speakers"


def stream_of(msg: AudioChunk | Segment | Transcript | ClientResult) -> str:
    """The stream whose listeners receive this session's results."""
    return msg.stream_id or msg.session_id


def results_subject(stream_id: str) -> str:
    """Core NATS subject of a stream's live results (ClientResult): fan-out publishes, edges subscribe."""
    return f"tolk.session.{stream_id}.out"


# Per-session endpointing (AudioChunk.endpoint_ms, .max_utterance_s): the bounds every API validates against and
# the segmenter clamps to. Outside them a session would either never get a final or get one per breath.
ENDPOINT_MS_RANGE = (100, 5000)
MAX_UTTERANCE_S_RANGE = (2.0, 30.0)
NO_ENDPOINT = -1  # endpoint_ms: silence never ends an utterance (Deepgram `endpointing=false`)
# Per-session diarization (AudioChunk.max_speakers): 0 = the diarizer's TOLK_DIARIZER_MAX_SPEAKERS.
MAX_SPEAKERS_RANGE = (1, 32)


class _Msg(msgspec.Struct, kw_only=True, frozen=True):
    """Base: unknown fields are tolerated so a newer producer can add optional ones."""

    v: int = SCHEMA_VERSION


class AudioChunk(_Msg, frozen=True):
    """Raw client audio as received by the edge (``tolk.audio.<partition>.<session>``).

    Format travels with every chunk so the segmenter is stateless with respect to session setup
    and a redelivered chunk is self-describing.
    """

    session_id: str
    chunk_seq: int
    sample_rate: int
    encoding: Encoding
    language: str
    data: bytes
    received_at: float  # edge wall clock (unix seconds) when the frame arrived
    end: bool = False  # client sent `stop`: flush and finish the session
    # Whose listeners get the results: "" = the session itself (a microphone). A broadcast channel's
    # pipeline runs are sessions `ch=<name>=<run>` of the stream `ch=<name>` (see `stream_of`).
    stream_id: str = ""
    prompt: str = ""  # Whisper's initial prompt for this session's finals (OpenAI `prompt`); "" = none
    vocabulary: tuple[str, ...] = ()  # names and terms to spell as given (`vocabulary`, Deepgram `keyterm`, ...)
    # The client asked for the open utterance's final now (empty `data`): it travels with the audio, so it cuts
    # exactly where the client sent it and a replayed stream cuts at the same sample.
    flush: bool = False
    # The session's endpointing (0: the server's TOLK_ENDPOINT_MS / TOLK_MAX_UTTERANCE_S; NO_ENDPOINT: pauses
    # never end an utterance, only the cap, a flush or stop). On every chunk, like `language`: a replay after a
    # segmenter crash re-applies them. The segmenter applies a change from the next utterance.
    endpoint_ms: int = 0
    max_utterance_s: float = 0.0
    # Speaker labels wanted (native `diarize`, Deepgram `diarize=true`, Speechmatics `diarization: speaker`): the
    # segmenter sends each final's audio to the diarizer too. `max_speakers` 0: the diarizer's default.
    diarize: bool = False
    max_speakers: int = 0


class Segment(_Msg, frozen=True):
    """A window of 16 kHz mono PCM for STT (``tolk.segment.{partial,final}.<partition>.<session>``).

    Partials carry the whole utterance so far, so STT replicas need no per-session state.
    """

    session_id: str
    utterance_id: int
    seq: int  # per-session order of everything the segmenter emits
    # Finals are numbered 1, 2, 3... per session; a partial carries the number its utterance's final
    # will get. Fan-out orders finals by it and shows a partial only once every earlier final is out.
    final_index: int
    kind: SegmentKind
    audio: bytes  # int16 little-endian, 16 kHz, mono
    start: float  # stream seconds
    end: float
    language: str  # requested language, or "auto"
    speech_end_wall: float  # edge wall clock of the audio at `end` (latency reference)
    partition: int
    speech_start: float = 0.0  # stream seconds of the VAD onset (`start` includes pre-roll)
    endpoint: Endpoint = Endpoint.NONE
    stream_id: str = ""
    # On the final subject, kind FINAL, but not a final: the audio a final will carry if the pause goes on
    # (sent once the tail pad of silence has passed). STT may decode it early and reuse that for the final;
    # no transcript is published for it.
    speculative: bool = False
    prompt: str = ""  # the session's initial prompt (AudioChunk.prompt), for finals when it has no text yet
    vocabulary: tuple[str, ...] = ()  # the session's vocabulary when this was cut (AudioChunk.vocabulary)
    diarize: bool = False  # AudioChunk.diarize: fan-out waits (bounded) for this final's speaker labels
    max_speakers: int = 0


class Word(msgspec.Struct, frozen=True):
    word: str
    start: float
    end: float
    probability: float
    speaker: str = ""  # "S1", "S2"... in order of appearance (diarized sessions only, set by fan-out)
    speaker_confidence: float = 0.0


class SpeakerSpan(msgspec.Struct, frozen=True):
    """Who spoke from `start` to `end` (stream seconds) of one utterance."""

    start: float
    end: float
    speaker: str  # "S1", "S2"... numbered in order of appearance, stable for the session
    confidence: float  # cosine similarity of the span's voice to its speaker's (0..1)


class SpeakerTurns(_Msg, frozen=True):
    """The diarizer's labels for one final (``tolk.speakers.<partition>.<session>``), keyed by `utterance_id`."""

    session_id: str
    utterance_id: int
    final_index: int
    partition: int
    spans: tuple[SpeakerSpan, ...] = ()
    speakers: int = 0  # speakers heard in the session so far
    stream_id: str = ""
    # 0: the first labels of this utterance; 1, 2...: a later decision changed them (a short voice turned out to
    # be a new speaker, two voices merged). Fan-out sends a revision of a final already out as a SPEAKERS result.
    revision: int = 0


class DiarizerState(_Msg, frozen=True):
    """KV `tolk_diarizer`, key = session id: a session's voices after its latest final, so labels survive a
    diarizer restart and a resume. `centroids`: float32 rows (unnormalised sums), one per cluster."""

    session_id: str
    centroids: bytes = b""
    weights: tuple[float, ...] = ()  # seconds of speech behind each centroid
    dim: int = 0
    last_utterance: int = 0  # the newest utterance counted (a redelivered one is not counted twice)
    merged: dict[int, int] = {}  # cluster → the cluster it was merged into
    numbers: dict[int, int] = {}  # cluster → label number (S<n>) of the clusters that are speakers


class Transcript(_Msg, frozen=True):
    """STT output, or the segmenter's END marker (``tolk.transcript.<partition>.<session>``).

    STT publishes every final, and the partials it transcribes; superseded partials are acked unseen.
    """

    session_id: str
    utterance_id: int
    seq: int
    final_index: int  # see Segment; END carries the number of finals + 1
    kind: ResultKind
    partition: int
    text: str = ""
    language: str = ""
    start: float = 0.0
    end: float = 0.0
    words: tuple[Word, ...] = ()
    speech_end_wall: float = 0.0
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    speech_start: float = 0.0
    endpoint: Endpoint = Endpoint.NONE
    language_prob: float = 0.0  # detection probability when the language was detected, else 0
    stream_id: str = ""
    # Set by the translator on `tolk.result.*`: target → text, and target → error code for targets
    # it could not serve (unsupported pair, engine failure). Every requested target is in one of them.
    translations: dict[str, str] = {}
    translation_errors: dict[str, str] = {}
    # Set by STT on finals whose stream wants a translation served through Whisper (a multilingual model's own
    # translate task, a second decode of the final's audio): the speech read out in English ("" = none). The
    # translator passes it on as `en` (engine `whisper`) or pivots from it (de→en→pt) instead of the text.
    speech_translation: str = ""
    diarize: bool = False  # Segment.diarize: fan-out merges SpeakerTurns into the final's words
    # Set by the translator, for targets in `translations`: the engine that made each (`whisper`, `fast`; a
    # pivot names both hops, `whisper+fast`), and target → bridge language for the pivoted ones.
    translation_engines: dict[str, str] = {}
    translation_pivots: dict[str, str] = {}


class ClientResult(_Msg, frozen=True):
    """What fan-out sends to the edge serving a session (``tolk.session.<session>.out``)."""

    session_id: str
    utterance_id: int
    seq: int
    kind: ResultKind
    text: str = ""
    stable_text: str = ""
    language: str = ""
    start: float = 0.0
    end: float = 0.0
    words: tuple[Word, ...] = ()
    speech_end_wall: float = 0.0
    speech_start: float = 0.0
    endpoint: Endpoint = Endpoint.NONE
    translations: dict[str, str] = {}
    translation_errors: dict[str, str] = {}
    stream_id: str = ""
    published_at: float = 0.0  # fan-out's wall clock when it sent this (delivery-lag metrics)
    translation_engines: dict[str, str] = {}
    translation_pivots: dict[str, str] = {}
    # Diarized sessions: the speaker of most of a final's words; `speakers_late`: sent before its labels came (a
    # SPEAKERS result follows when they do).
    speaker: str = ""
    speakers_late: bool = False
    # Multichannel sessions: the audio channel (0-based) this result is of. Each channel runs as its own stream
    # through the pipeline; the edge sets this when it merges them (fan-out never does).
    channel: int = 0


class SessionRecord(_Msg, frozen=True):
    """Session state in KV bucket ``tolk_sessions`` (key = session id)."""

    session_id: str
    status: str  # "streaming" | "draining" | "detached" (client gone, may resume) | "closed"
    sample_rate: int
    encoding: Encoding
    language: str
    partition: int
    created_at: float
    updated_at: float
    edge: str = ""
    # Bumped by every connection that attaches (start, then each resume): its audio chunks are numbered
    # from epoch << 32, so a resumed stream's chunks sort after everything sent before it.
    epoch: int = 0
    # Given to the client in `started`; a resume must present it, so knowing a session id is not enough.
    resume_key: str = ""
    # Who started it (edge.auth identity: "key:<hash>" or "sub:<subject>"; "" with authentication off): its
    # transcript, export and resume answer no one else. Uploads get a record too (status "file").
    owner: str = ""
    # Audio channels, each its own pipeline stream (`<session>=c<i>`) when more than one: such a session is not
    # resumable, and a resume is told so.
    channels: int = 1


class SegmenterCheckpoint(_Msg, frozen=True):
    """KV `tolk_segmenter`, key = session id: the numbering and stream clock at the oldest audio still unacked,
    so a restarted segmenter replays that audio (the stream still holds it) and numbers on from here."""

    session_id: str
    seq: int
    finals: int
    utterance_id: int
    frames: int  # the stream clock (VAD frames) where a replay resumes
    last_chunk: int  # chunks up to this one are covered: a restarted segmenter skips them
    # 16 kHz samples at the start of the chunk after `last_chunk` that are covered too (a replay drops them).
    skip: int = 0
    ended: bool = False  # the session's `stop` was handled: later chunks are ignored


class ListenerRecord(_Msg, frozen=True):
    """KV `tolk_listeners`, key `<stream>.<listener>`: one reader of a stream's results and the
    languages it wants. A microphone session is the single listener of its own stream; a broadcast
    channel has many. The translator serves the union of a stream's listeners' targets, once.
    """

    stream_id: str
    listener_id: str
    targets: tuple[str, ...] = ()
    translate_partials: bool = False
    edge: str = ""
    updated_at: float = 0.0


class ChannelRecord(_Msg, frozen=True):
    """KV `tolk_channels`, key = name: a configured broadcast channel (written by ingest from its config)."""

    name: str
    url: str
    language: str = "auto"
    targets: tuple[str, ...] = ()  # default targets for listeners that name none
    title: str = ""


class IngestLease(_Msg, frozen=True):
    """KV `tolk_ingest`, key = channel name: which ingest replica runs the channel's pipeline (TTL-bound)."""

    channel: str
    instance: str
    session_id: str  # the current run: `ch=<name>=<run>`
    started_at: float


class ActorHeartbeat(_Msg, frozen=True):
    """Liveness in KV bucket ``tolk_actors`` (key = ``<actor>.<instance>``, TTL expires the dead)."""

    actor: str
    instance: str
    pid: int
    started_at: float
    ready: bool
    detail: str = ""
    metrics_port: int = 0  # the actor's /metrics and probes (0: none)
    info: dict[str, str] = {}  # what the actor serves, e.g. stt: {"pool", "model", "languages"}
    translation: TranslationCatalog | None = None  # a translator's engines and pairs (schemas/translation.py)


def client_result(t: Transcript, text: str, stable: str) -> ClientResult:
    """What a client is sent for a transcript (fan-out's live results and the edge's replay on resume)."""
    return ClientResult(
        session_id=t.session_id, utterance_id=t.utterance_id, seq=t.seq, kind=t.kind,
        text=text, stable_text=stable, language=t.language, start=t.start, end=t.end,
        words=t.words, speech_end_wall=t.speech_end_wall, speech_start=t.speech_start, endpoint=t.endpoint,
        translations=t.translations, translation_errors=t.translation_errors, stream_id=t.stream_id,
        translation_engines=t.translation_engines, translation_pivots=t.translation_pivots,
    )


def _speaker_at(spans: tuple[SpeakerSpan, ...], start: float, end: float) -> SpeakerSpan | None:
    """The span overlapping [start, end] most (the nearest one for a word outside every span)."""
    if not spans:
        return None
    best, span = max(((min(end, s.end) - max(start, s.start), s) for s in spans), key=lambda o: o[0])
    if best > 0:
        return span
    mid = (start + end) / 2
    inside = [s for s in spans if s.start <= mid <= s.end]
    return inside[0] if inside else min(spans, key=lambda s: min(abs(mid - s.start), abs(mid - s.end)))


def with_speakers(r: ClientResult, turns: SpeakerTurns) -> ClientResult:
    """`r` with each word's speaker (the span it overlaps most), and the speaker of most of its words' time as the
    result's. Fan-out merges live labels with it; the edge, stored ones (exports, a resume's replay)."""
    words: list[Word] = []
    talk: dict[str, float] = {}
    for w in r.words:
        span = _speaker_at(turns.spans, w.start, w.end)
        if span is None:
            words.append(w)
            continue
        words.append(msgspec.structs.replace(w, speaker=span.speaker, speaker_confidence=span.confidence))
        talk[span.speaker] = talk.get(span.speaker, 0.0) + max(w.end - w.start, 0.01)
    if not talk:  # no words (or none timed): the utterance's own majority
        for s in turns.spans:
            talk[s.speaker] = talk.get(s.speaker, 0.0) + s.end - s.start
    speaker = max(talk, key=lambda k: talk[k]) if talk else ""
    return msgspec.structs.replace(r, words=tuple(words), speaker=speaker, speakers_late=False)
