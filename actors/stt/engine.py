"""Speech-to-text engines behind one narrow interface, and the faster-whisper adapter.

The adapter batches *across sessions*: each request is one utterance (≤ 30 s), all are encoded in
one CTranslate2 call and decoded in one `generate` with a per-item prompt (so languages may mix).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from actors.stt.guards import collapse_repeats, reject_reason

log = logging.getLogger("tolk.stt.engine")

SAMPLE_RATE = 16000
N_FRAMES = 3000  # Whisper's 30 s window in mel frames
HOP = 160
PROMPT_BUCKETS = (8, 16, 32, 64, 128, 224)  # prompt lengths a batch is grouped by (224: Whisper's maximum)
RECOVER_WINDOW_S = 15.0  # encoder window (at least) for re-decoding audio a final's words left out


@dataclass(frozen=True)
class SttRequest:
    audio: np.ndarray  # float32 mono 16 kHz, at most 30 s
    language: str  # ISO code, or "auto"
    word_timestamps: bool = False
    # The session's previous text, as Whisper's <|startofprev|> prompt (offline Whisper conditions on it too):
    # short utterances decoded without context come out garbled.
    prompt: str = ""


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class SttResult:
    text: str
    language: str
    no_speech_prob: float
    avg_logprob: float
    words: list[WordTiming] = field(default_factory=list)
    rejected: str | None = None  # guard that blanked the text, for logs and metrics
    language_prob: float = 0.0  # detection probability when the language was detected, else 0


class SpeechToText(Protocol):
    """What the STT actor needs of an engine: one blocking call per batch, any mix of sessions."""

    multilingual: bool
    device: str

    def transcribe_batch(self, requests: list[SttRequest], window_s: float = 30.0,
                         beam_size: int | None = None) -> list[SttResult]: ...


@dataclass(frozen=True)
class WhisperOptions:
    device: str = "auto"  # auto | cpu | cuda
    compute_type: str = "auto"  # auto → int8 on CPU, float16 on CUDA
    cpu_threads: int = 2
    workers: int = 2  # concurrent model calls (weights shared): finals never queue behind partials
    beam_size: int = 1
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    compression_threshold: float = 2.4
    tokens_per_second: float = 8.0  # decode budget: speech runs ~3-4 tokens/s; loops run away
    prompt_tokens: int = 128  # most of a request's previous text used as its prompt (0: none)


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class WhisperEngine:
    def __init__(self, model_dir: Path, options: WhisperOptions | None = None) -> None:
        from faster_whisper import WhisperModel

        self.opts = opts = options or WhisperOptions()
        self.device = pick_device(opts.device)
        compute = opts.compute_type
        if compute == "auto":
            compute = "float16" if self.device == "cuda" else "int8"
        self.compute_type = compute
        self.model = WhisperModel(
            str(model_dir),
            device=self.device,
            compute_type=compute,
            cpu_threads=opts.cpu_threads,
            num_workers=opts.workers,
        )
        self.multilingual = bool(self.model.model.is_multilingual)
        self._tokenizers: dict[str, Any] = {}
        log.info("whisper %s on %s/%s (multilingual=%s)", model_dir, self.device, compute, self.multilingual)

    def _tokenizer(self, language: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        key = language if self.multilingual else "en"
        tok = self._tokenizers.get(key)
        if tok is None:
            tok = Tokenizer(
                self.model.hf_tokenizer,
                self.multilingual,
                task="transcribe",
                language=key if self.multilingual else None,
            )
            self._tokenizers[key] = tok
        return tok

    def supports(self, language: str) -> bool:
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if language == "auto":
            return True
        return language in _LANGUAGE_CODES if self.multilingual else language == "en"

    def _mel(self, audio: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.feature_extractor(audio)[..., :-1])

    @staticmethod
    def window_frames(longest_frames: int, window_s: float) -> int:
        """Encoder input length: Whisper's full 30 s, or fitted to the batch (≥ window_s).

        Whisper was trained on 30 s windows; a fitted window costs a little accuracy but cuts the
        encoder (the dominant CPU cost for short utterances) by 2-3x. CTranslate2 accepts it.
        """
        if window_s >= N_FRAMES / 100:
            return N_FRAMES
        fitted = (longest_frames // 100 + 2) * 100  # + ≥1 s of padding, as Whisper expects silence after speech
        return min(N_FRAMES, max(int(window_s * 100), fitted))

    def context_tokens(self, prompt: str) -> list[int]:
        """The prompt's last tokens, cut to a length bucket: CTranslate2 decodes a batch together only when
        every prompt has the same length, so a few fixed lengths keep sessions batched."""
        if not prompt.strip() or self.opts.prompt_tokens <= 0:
            return []
        ids: list[int] = self.model.hf_tokenizer.encode(" " + prompt.strip(), add_special_tokens=False).ids
        fits = [b for b in PROMPT_BUCKETS if b <= min(len(ids), self.opts.prompt_tokens)]
        return ids[-fits[-1]:] if fits else []

    def transcribe_batch(self, requests: list[SttRequest], window_s: float = 30.0,
                         beam_size: int | None = None, recover: bool = True) -> list[SttResult]:
        """One encoder + decoder call per prompt length in the batch (usually one or two); finals (word
        timings asked) whose words leave voiced audio uncovered get one more call for it (`_recover`)."""
        contexts = [self.context_tokens(r.prompt) for r in requests]
        groups: dict[int, list[int]] = {}
        for i, ctx in enumerate(contexts):
            groups.setdefault(len(ctx), []).append(i)
        results: list[SttResult | None] = [None] * len(requests)
        for idxs in groups.values():
            out = self._transcribe([requests[i] for i in idxs], [contexts[i] for i in idxs], window_s,
                                   beam_size or self.opts.beam_size)
            for i, r in zip(idxs, out, strict=True):
                results[i] = r
        # A prompt can pull Whisper into repeating it: retry those without one, as offline Whisper resets it.
        looped = [i for i, r in enumerate(results) if r is not None and r.rejected == "repetition" and contexts[i]]
        if looped:
            out = self._transcribe([requests[i] for i in looped], [[] for _ in looped], window_s,
                                   beam_size or self.opts.beam_size)
            for i, r in zip(looped, out, strict=True):
                results[i] = r
        done = [r for r in results if r is not None]
        return self._recover(requests, done, window_s, beam_size) if recover else done

    def _recover(self, requests: list[SttRequest], results: list[SttResult], window_s: float,
                 beam_size: int | None) -> list[SttResult]:
        """Voiced audio the words leave out (actors/stt/coverage.py) decoded once more and added: a head
        without the prompt (that is what made Whisper skip it), a tail with the text so far as prompt."""
        from actors.stt import coverage

        todo: list[tuple[int, coverage.Span]] = []
        extra: list[SttRequest] = []
        for i, (req, res) in enumerate(zip(requests, results, strict=True)):
            if not req.word_timestamps or not res.words:
                continue
            for span in coverage.uncovered(req.audio, res.words):
                audio = req.audio[int(span.start * SAMPLE_RATE): int(span.end * SAMPLE_RATE)]
                prompt = f"{req.prompt} {res.text}".strip() if span.side == "tail" else ""
                todo.append((i, span))
                extra.append(SttRequest(audio, res.language, True, prompt))
        if not extra:
            return results
        log.debug("re-decoding %d uncovered spans", len(extra))
        out = list(results)
        # The spans are short: a window fitted to them (not under 15 s, where tiny.en starts inventing words)
        # costs about half of the full one, and only these finals pay it.
        decoded_spans = self.transcribe_batch(extra, min(window_s, RECOVER_WINDOW_S), beam_size, recover=False)
        for (i, span), decoded in zip(todo, decoded_spans, strict=True):
            out[i] = coverage.merge(out[i], span, decoded)
        return out

    def _transcribe(self, requests: list[SttRequest], contexts: list[list[int]], window_s: float,
                    beam_size: int) -> list[SttResult]:
        from faster_whisper.audio import pad_or_trim

        if not requests:
            return []
        mels = [self._mel(r.audio) for r in requests]
        frames = [min(N_FRAMES, m.shape[-1]) for m in mels]
        width = self.window_frames(max(frames), window_s)
        encoded = self.model.encode(np.stack([pad_or_trim(m, width) for m in mels]))
        languages, probs = self._languages(requests, encoded)
        tokenizers = [self._tokenizer(lang) for lang in languages]
        prompts = [
            [*([tok.sot_prev, *ctx] if ctx else []), *tok.sot_sequence, tok.no_timestamps]
            for tok, ctx in zip(tokenizers, contexts, strict=True)
        ]
        longest = max(len(r.audio) for r in requests) / SAMPLE_RATE
        budget = int(longest * self.opts.tokens_per_second) + 16
        max_length = min(self.model.max_length, len(prompts[0]) + budget)
        outputs = self.model.model.generate(
            encoded,
            prompts,
            beam_size=beam_size,
            patience=1.0,
            length_penalty=1.0,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        results: list[SttResult] = []
        tokens_out: list[list[int]] = []
        for out, tok, lang, prob in zip(outputs, tokenizers, languages, probs, strict=True):
            tokens = [t for t in out.sequences_ids[0] if t < tok.eot]
            n = len(tokens)
            avg_logprob = (out.scores[0] * n) / (n + 1) if n else -10.0  # as faster-whisper computes it
            text = collapse_repeats(tok.decode(tokens).strip())
            reason = reject_reason(
                text,
                out.no_speech_prob,
                avg_logprob,
                self.opts.no_speech_threshold,
                self.opts.logprob_threshold,
                self.opts.compression_threshold,
            )
            if reason:
                text, tokens = "", []
            tokens_out.append(tokens)
            results.append(SttResult(text, lang, float(out.no_speech_prob), float(avg_logprob), rejected=reason,
                                     language_prob=prob))
        self._add_words(requests, results, tokens_out, tokenizers, encoded, frames)
        return results

    def _languages(self, requests: list[SttRequest], encoded: object) -> tuple[list[str], list[float]]:
        if not self.multilingual:
            return ["en"] * len(requests), [0.0] * len(requests)
        langs = [r.language for r in requests]
        probs = [0.0] * len(requests)
        if "auto" in langs:
            detected = self.model.model.detect_language(encoded)
            for i, lang in enumerate(langs):
                if lang == "auto":
                    token, prob = detected[i][0]
                    langs[i], probs[i] = token[2:-2], float(prob)  # '<|de|>' → 'de'
        return langs, probs

    def _add_words(
        self,
        requests: list[SttRequest],
        results: list[SttResult],
        tokens: list[list[int]],
        tokenizers: list[Any],
        encoded: object,
        frames: list[int],
    ) -> None:
        """Word timings for requests that ask (finals): one align call per language over the batch's
        own encoder output; items not aligned in a call get empty tokens (no re-encoding)."""
        from faster_whisper.transcribe import merge_punctuations

        wanted = [i for i, r in enumerate(requests) if r.word_timestamps and tokens[i]]
        if not wanted:
            return
        by_lang: dict[str, list[int]] = {}
        for i in wanted:
            by_lang.setdefault(results[i].language, []).append(i)
        for idxs in by_lang.values():
            chosen = set(idxs)
            batch_tokens = [tokens[i] if i in chosen else [] for i in range(len(requests))]
            alignments = self.model.find_alignment(tokenizers[idxs[0]], batch_tokens, encoded, frames)
            for i in idxs:
                alignment = alignments[i]
                merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
                words = [
                    WordTiming(
                        a["word"].strip(),
                        round(float(a["start"]), 3),
                        round(float(a["end"]), 3),
                        round(float(a["probability"]), 3),
                    )
                    for a in alignment
                    if a["word"].strip()
                ]
                r = results[i]
                results[i] = dataclasses.replace(r, words=words)
