"""Builds randomly initialised Marian (Opus-MT architecture) models, for tests and benchmarks.

Real files in the real layouts (a model folder, or a Hugging Face cache snapshot), loaded by the same
EasyNMT / transformers code as production Opus-MT weights. Random weights mean the *output* is
nonsense: tests built on these check loading, batching, routing, caching and errors, not quality.
`size="opus"` has Opus-MT's real dimensions (6+6 layers, d_model 512, 58k vocabulary: ~75M parameters),
so its compute cost is Opus-MT's; with random weights it rarely stops early, so every output runs to
`max_length` tokens: benchmark numbers are for fixed-length outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from loadtest.speech import speech_dir

_SPM_CACHE: dict[str, Path] = {}


def _spm(workdir: Path) -> Path:
    """One small SentencePiece model trained on the corpus' reference texts (shared by all pairs)."""
    key = str(workdir)
    if key in _SPM_CACHE:
        return _SPM_CACHE[key]
    import csv

    import sentencepiece as spm

    text = workdir / "spm-corpus.txt"
    with open(speech_dir() / "translations.tsv", newline="", encoding="utf-8") as fh:
        lines = [r["reference_translation"] for r in csv.DictReader(fh, delimiter="\t")]
    text.write_text("\n".join(lines), encoding="utf-8")
    prefix = workdir / "tiny"
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(prefix), vocab_size=300, model_type="unigram", character_coverage=1.0,
        bos_id=-1, eos_id=1, unk_id=2, pad_id=0, minloglevel=2,
    )
    _SPM_CACHE[key] = prefix.with_suffix(".model")
    return _SPM_CACHE[key]


def build_marian(out: Path, workdir: Path, seed: int = 0, size: str = "tiny", max_length: int = 24) -> Path:
    """Write a tiny MarianMT model + MarianTokenizer files to `out` and return it."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    model_file = _spm(workdir)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab["<pad>"], vocab["</s>"], vocab["<unk>"] = 0, 1, 2
    out.mkdir(parents=True, exist_ok=True)
    for name in ("source.spm", "target.spm"):
        shutil.copy(model_file, out / name)
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tok = MarianTokenizer(str(out / "source.spm"), str(out / "target.spm"), str(out / "vocab.json"))
    torch.manual_seed(seed)
    if size == "opus":
        dims = {"vocab_size": 58101, "d_model": 512, "encoder_layers": 6, "decoder_layers": 6,
                "encoder_attention_heads": 8, "decoder_attention_heads": 8, "encoder_ffn_dim": 2048,
                "decoder_ffn_dim": 2048, "max_position_embeddings": 512}
    else:
        dims = {"vocab_size": len(vocab), "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
                "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
                "decoder_ffn_dim": 64, "max_position_embeddings": 128}
    config = MarianConfig(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **dims)
    model = MarianMTModel(config)
    model.generation_config.max_length = max_length
    if dims["vocab_size"] > len(vocab):  # only the tokenizer's pieces can be decoded back to text
        model.generation_config.suppress_tokens = list(range(len(vocab), dims["vocab_size"]))
    model.generation_config.num_beams = 1
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_hf_cache_snapshot(hub: Path, repo: str, workdir: Path, seed: int = 0, size: str = "tiny") -> Path:
    """The layout `from_pretrained(repo)` reads offline: hub/models--org--name/{refs/main,snapshots/<rev>/}."""
    revision = "0" * 40
    root = hub / ("models--" + repo.replace("/", "--"))
    snapshot = build_marian(root / "snapshots" / revision, workdir, seed, size)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot
