"""The faster-whisper adapter behind the STT engines' narrow interface (actors/stt/interface.py).

The adapter batches *across sessions*: each request is one utterance (≤ 30 s), all are encoded in
one CTranslate2 call and decoded in one `generate` with a per-item prompt (so languages may mix).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actors.stt.guards import collapse_repeats, reject_reason
from actors.stt.interface import SAMPLE_RATE, SttRequest, SttResult, WordTiming

log = logging.getLogger("tolk.stt.engine")

N_FRAMES = 3000  # Whisper's 30 s window in mel frames
HOP = 160
PROMPT_BUCKETS = (8, 16, 32, 64, 128, 224)  # prompt lengths a batch is grouped by (224: Whisper's maximum)
MAX_HOTWORD_TOKENS = 112  # a vocabulary takes at most half the prompt: the text so far keeps the rest
RECOVER_WINDOW_S = 15.0  # encoder window (at least) for re-decoding audio a final's words left out
CLOSING_PUNCTUATION = ",.;:!?、。，"  # what a continuation may open with: the end of the prefix's sentence


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
    # Whisper hears level: speech peaking at -50 dBFS reads with more than twice the deletions it has at its
    # recorded level (offline Whisper too). Quieter input is raised to peak at level_dbfs, by at most
    # level_max_gain_db (0: off); louder input is left as it is.
    level_dbfs: float = -10.0
    level_max_gain_db: float = 40.0


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

    def _tokenizer(self, language: str, task: str = "transcribe") -> Any:
        from faster_whisper.tokenizer import Tokenizer

        key = language if self.multilingual else "en"
        tok = self._tokenizers.get(f"{task}:{key}")
        if tok is None:
            tok = Tokenizer(
                self.model.hf_tokenizer,
                self.multilingual,
                task=task,
                language=key if self.multilingual else None,
            )
            self._tokenizers[f"{task}:{key}"] = tok
        return tok

    def supports(self, language: str) -> bool:
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if language == "auto":
            return True
        return language in _LANGUAGE_CODES if self.multilingual else language == "en"

    def _mel(self, audio: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.feature_extractor(self.leveled(audio))[..., :-1])

    def leveled(self, audio: np.ndarray) -> np.ndarray:
        """The audio raised to peak at level_dbfs where it is quieter (never lowered, never by more than the
        cap: digital silence stays silent, a faint noise floor stays faint)."""
        peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
        if self.opts.level_max_gain_db <= 0 or peak <= 0:
            return audio
        gain = min(10 ** (self.opts.level_dbfs / 20) / peak, 10 ** (self.opts.level_max_gain_db / 20))
        return (audio * gain).astype(np.float32) if gain > 1 else audio

    def encode_seconds(self, window_s: float, repeats: int = 3) -> float:
        """What one encoder pass over a `window_s` window takes here (the fastest of `repeats`).

        The full 30 s window's price over a fitted one differs by three orders of magnitude between a GPU and
        two CPU cores, so the STT actor measures it where it runs instead of guessing from the device.
        """
        from faster_whisper.audio import pad_or_trim

        mel = pad_or_trim(self._mel(np.zeros(SAMPLE_RATE, np.float32)), self.window_frames(0, window_s))[None]
        took = []
        for _ in range(max(1, repeats)):
            began = time.perf_counter()
            self.model.encode(mel)
            took.append(time.perf_counter() - began)
        return min(took)

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

    def context_tokens(self, prompt: str, hotwords: str = "") -> list[int]:
        """The vocabulary's tokens, whole, then the prompt's last tokens, cut to a length bucket: CTranslate2
        decodes a batch together only when every prompt has the same length, so a few fixed lengths keep
        sessions batched (a vocabulary that fits no bucket with the text so far is sent alone)."""
        head = list(_glossary_ids(self.model.hf_tokenizer, hotwords)) if hotwords.strip() else []
        ids = self._ids(prompt) if prompt.strip() and self.opts.prompt_tokens > 0 else []
        if not head and not ids:
            return []
        limit = min(len(head) + len(ids), max(self.opts.prompt_tokens, len(head)))
        fits = [b for b in PROMPT_BUCKETS if len(head) <= b <= limit]
        if not fits:
            return head
        tail = fits[-1] - len(head)
        return [*head, *(ids[-tail:] if tail else [])]

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = self.model.hf_tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids
        return ids

    def fit_context(self, request: SttRequest, window_s: float) -> SttRequest:
        """The request with as much of its left context as the encoder window has room for (the window is not
        widened for it: ≥ 1 s of it stays for the padding Whisper expects), or none."""
        ctx = request.context
        if ctx is None:
            return request
        fitted = None
        if ctx.language == request.language and ctx.words:
            room = min(N_FRAMES / 100, window_s) - 1.0 - len(request.audio) / SAMPLE_RATE
            fitted = ctx.tail(room) if room > 0.5 else None
        return request if fitted is ctx else dataclasses.replace(request, context=fitted)

    def prefix_tokens(self, request: SttRequest) -> list[int]:
        return self._ids(request.context.text) if request.context is not None else []

    def transcribe_batch(self, requests: list[SttRequest], window_s: float = 30.0,
                         beam_size: int | None = None, recover: bool = True) -> list[SttResult]:
        """One encoder + decoder call per prompt length in the batch (usually one or two); finals (word
        timings asked) whose words leave voiced audio uncovered get one more call for it (`_recover`)."""
        requests = [self.fit_context(r, window_s) for r in requests]
        prefixes = [self.prefix_tokens(r) for r in requests]
        contexts = [self.context_tokens(r.prompt, r.hotwords) for r in requests]
        groups: dict[int, list[int]] = {}
        for i, ctx in enumerate(contexts):
            groups.setdefault(len(ctx), []).append(i)
        results: list[SttResult | None] = [None] * len(requests)
        for idxs in groups.values():
            out = self._transcribe([requests[i] for i in idxs], [contexts[i] for i in idxs],
                                   [prefixes[i] for i in idxs], window_s, beam_size or self.opts.beam_size)
            for i, r in zip(idxs, out, strict=True):
                results[i] = r
        # A prompt can pull Whisper into repeating it, a left context into reading it again: retry those without
        # either, as offline Whisper resets its prompt.
        looped = [i for i, r in enumerate(results) if r is not None and (
            r.rejected == "reread" or (r.rejected == "repetition" and (contexts[i] or prefixes[i])))]
        if looped:
            out = self._transcribe([dataclasses.replace(requests[i], context=None) for i in looped],
                                   [[] for _ in looped], [[] for _ in looped], window_s,
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
                extra.append(SttRequest(audio, res.language, True, prompt, hotwords=req.hotwords))
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

    def _transcribe(self, requests: list[SttRequest], contexts: list[list[int]], prefixes: list[list[int]],
                    window_s: float, beam_size: int) -> list[SttResult]:
        from faster_whisper.audio import pad_or_trim

        if not requests:
            return []
        mels = [self._mel(r.context.joined(r.audio) if r.context else r.audio) for r in requests]
        frames = [min(N_FRAMES, m.shape[-1]) for m in mels]
        width = self.window_frames(max(frames), window_s)
        encoded = self.model.encode(np.stack([pad_or_trim(m, width) for m in mels]))
        languages, probs = self._languages(requests, encoded)
        tokenizers = [self._tokenizer(lang) for lang in languages]
        # Finals over Whisper's whole 30 s window are decoded as offline Whisper decodes, with timestamp tokens:
        # in that mode it keeps a phrase cut at an utterance's edge ("… different than the…" where the
        # no-timestamps mode writes "… than me.") and a soft head it otherwise skips. Over a fitted window the
        # timestamps are out of what it was trained on (it stops early, "… by 25-30" for "… 25 to 30 years"), and
        # partials want no extra tokens: those keep the no-timestamps mode, and so does a batch mixing both
        # (CTranslate2 decodes one mode per call, and a second call would cost the first partial its latency).
        timestamps = width >= N_FRAMES and all(r.word_timestamps for r in requests)
        prompts = [
            [*([tok.sot_prev, *ctx] if ctx else []), *tok.sot_sequence,
             tok.timestamp_begin if timestamps else tok.no_timestamps, *pre]
            for tok, ctx, pre in zip(tokenizers, contexts, prefixes, strict=True)
        ]
        longest = max(len(r.audio) for r in requests) / SAMPLE_RATE
        # + a timestamp pair per segment (a segment lasts a few seconds) in that mode
        budget = int(longest * (self.opts.tokens_per_second + (1.0 if timestamps else 0.0))) + 16
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
        for out, tok, lang, prob, pre, req in zip(outputs, tokenizers, languages, probs, prefixes, requests,
                                                 strict=True):
            ids = out.sequences_ids[0]
            if timestamps and ids[:1] == [tok.timestamp_begin]:  # the prompt's first timestamp comes back
                ids = ids[1:]
            tokens = [t for t in ids if t < tok.eot]
            # the score is per token generated, timestamps included (as faster-whisper computes the average)
            n = sum(t != tok.eot for t in ids)
            if pre and tokens[: len(pre)] == pre:  # the forced prefix comes back first
                tokens = tokens[len(pre):]
                n -= len(pre)
            avg_logprob = (out.scores[0] * n) / (n + 1) if tokens and n > 0 else -10.0
            text = collapse_repeats(tok.decode(tokens).strip().lstrip(CLOSING_PUNCTUATION).strip())
            reason = reject_reason(
                text,
                out.no_speech_prob,
                avg_logprob,
                self.opts.no_speech_threshold,
                self.opts.logprob_threshold,
                self.opts.compression_threshold,
            )
            if not reason and req.context is not None and _rereads(text, req.context.text):
                reason = "reread"
            if reason:
                text, tokens = "", []
            tokens_out.append(tokens)
            results.append(SttResult(text, lang, float(out.no_speech_prob), float(avg_logprob), rejected=reason,
                                     language_prob=prob,
                                     context_s=req.context.seconds if req.context is not None else 0.0))
        self._add_words(requests, results, tokens_out, prefixes, tokenizers, encoded, frames)
        return results

    def translate_batch(self, requests: list[SttRequest], window_s: float = 30.0,
                        beam_size: int | None = None) -> list[str]:
        """Whisper's own translate task: each request's speech, in its (known) language, read out in English, in
        one encoder + one `generate` call for the batch (a second decode of a final's audio; no prompt, no left
        context, no word timings). "" where the model is English-only, the language is English or unknown, or a
        guard rejects the output (a loop) over the full window too.

        A fitted window is further from Whisper's training for this task than for transcription: a long final
        can come out as a loop there (a word stuttered to the end, blanked by the guard: the whole sentence lost)
        that the full 30 s window reads. Those get one more decode over it; only they pay for it."""
        out = [""] * len(requests)
        todo = [i for i, r in enumerate(requests)
                if self.multilingual and r.language not in ("", "auto", "en") and len(r.audio)]
        beam = beam_size or self.opts.beam_size
        texts = self._translate([requests[i] for i in todo], window_s, beam)
        longest = max((len(requests[i].audio) // HOP for i in todo), default=0)
        fitted = self.window_frames(min(N_FRAMES, longest), window_s) < N_FRAMES
        again = [k for k, t in enumerate(texts) if t is None] if fitted else []
        for k, text in zip(again, self._translate([requests[todo[k]] for k in again], N_FRAMES / 100, beam),
                           strict=True):
            texts[k] = text
        for i, text in zip(todo, texts, strict=True):
            out[i] = text or ""
        return out

    def _translate(self, requests: list[SttRequest], window_s: float, beam_size: int) -> list[str | None]:
        """The translate task over `requests` in one call: each one's English, or None where a guard refused it."""
        from faster_whisper.audio import pad_or_trim

        if not requests:
            return []
        mels = [self._mel(r.audio) for r in requests]
        frames = [min(N_FRAMES, m.shape[-1]) for m in mels]
        encoded = self.model.encode(np.stack([pad_or_trim(m, self.window_frames(max(frames), window_s))
                                              for m in mels]))
        tokenizers = [self._tokenizer(r.language, "translate") for r in requests]
        prompts = [[*tok.sot_sequence, tok.no_timestamps] for tok in tokenizers]
        longest = max(len(r.audio) for r in requests) / SAMPLE_RATE
        # English runs a little longer in tokens than the speech it translates: 1.5x the transcription's budget
        budget = int(longest * self.opts.tokens_per_second * 1.5) + 16
        outputs = self.model.model.generate(
            encoded, prompts, beam_size=beam_size, patience=1.0, length_penalty=1.0,
            max_length=min(self.model.max_length, len(prompts[0]) + budget), return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1],
        )
        texts: list[str | None] = []
        for res, tok in zip(outputs, tokenizers, strict=True):
            tokens = [t for t in res.sequences_ids[0] if t < tok.eot]
            n = len(tokens)
            avg_logprob = (res.scores[0] * n) / (n + 1) if n else -10.0
            text = collapse_repeats(tok.decode(tokens).strip())
            # only a loop (or nothing) is refused: the transcription already judged speech there, and a
            # translation's confidence runs lower than a transcript's
            reason = reject_reason(text, 0.0, avg_logprob, 1.0, -math.inf, self.opts.compression_threshold)
            texts.append(None if reason else text)
        return texts

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
        prefixes: list[list[int]],
        tokenizers: list[Any],
        encoded: object,
        frames: list[int],
    ) -> None:
        """Word timings for requests that ask (finals): one align call per language over the batch's
        own encoder output; items not aligned in a call get empty tokens (no re-encoding). A left context's
        prefix is aligned with the words (it is in the audio) and then left out."""
        from faster_whisper.transcribe import merge_punctuations

        wanted = [i for i, r in enumerate(requests) if r.word_timestamps and tokens[i]]
        if not wanted:
            return
        by_lang: dict[str, list[int]] = {}
        for i in wanted:
            by_lang.setdefault(results[i].language, []).append(i)
        for idxs in by_lang.values():
            chosen = set(idxs)
            batch_tokens = [prefixes[i] + tokens[i] if i in chosen else [] for i in range(len(requests))]
            alignments = self.model.find_alignment(tokenizers[idxs[0]], batch_tokens, encoded, frames)
            for i in idxs:
                alignment = _after_prefix(alignments[i], len(prefixes[i]))
                ctx = requests[i].context
                shift = ctx.seconds if ctx is not None else 0.0
                for a in alignment:
                    a["start"], a["end"] = max(0.0, a["start"] - shift), max(0.0, a["end"] - shift)
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


def _rereads(text: str, context: str, n: int = 3) -> bool:
    """Most of the continuation's word n-grams are in the left context's text: Whisper read the context again
    instead of going on (a blip after a long sentence comes out as that sentence's words)."""
    def grams(t: str) -> list[tuple[str, ...]]:
        words = [w.strip(".,;:!?¿¡\"'«»()").lower() for w in t.split()]
        return [tuple(words[k : k + n]) for k in range(len(words) - n + 1)]

    mine = grams(text)
    seen = set(grams(context))
    return bool(mine) and 2 * sum(g in seen for g in mine) >= len(mine)


def _after_prefix(alignment: list[dict[str, Any]], prefix_len: int) -> list[dict[str, Any]]:
    """The aligned words that start past a forced prefix of `prefix_len` tokens (punctuation closing the
    prefix's last word is glued to it and goes with it), less any punctuation that opened the continuation."""
    if not prefix_len:
        return alignment
    out, seen = [], 0
    for a in alignment:
        if seen >= prefix_len:
            out.append(a)
        seen += len(a["tokens"])
    while out and not out[0]["word"].strip().strip(CLOSING_PUNCTUATION):
        out.pop(0)
    return out


@functools.lru_cache(maxsize=256)
def _glossary_ids(tokenizer: Any, hotwords: str) -> tuple[int, ...]:
    """A vocabulary's prompt tokens (at most MAX_HOTWORD_TOKENS), once per vocabulary: every request of a session
    carries the same one."""
    ids: list[int] = tokenizer.encode(" " + hotwords.strip(), add_special_tokens=False).ids
    return tuple(ids[:MAX_HOTWORD_TOKENS])
