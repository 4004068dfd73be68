"""Drafters for the draft/verify loop: what a drafter hands it (a Proposal), the drafter that proposes nothing,
prompt lookup, and a draft model of its own (a smaller model, or a subset of the target's layers).

A drafter has five methods, all batch-wide: start(prompts, first_tokens) once after the target's prefill,
propose(histories, k, settings, generator) -> Proposal, accept(n_accepted, own_tokens, width) after each
verification, select(rows) when finished sequences leave the batch, and cache_bytes() for its own KV cache.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from lab.ops.nbytes import cache_nbytes
from lab.ops.ragged import RaggedBatch, left_padded
from lab.ops.sampling import warped_probs


@dataclass
class Proposal:
    """Draft tokens for a batch: tokens [B, w], which of them are real [B, w] (a drafter may propose fewer
    than w for some sequences), and the draft's distributions [B, w, V] (None: a deterministic draft)."""
    tokens: torch.Tensor
    valid: torch.Tensor
    probs: torch.Tensor | None = None


class NullDrafter:
    """Proposes nothing: every round is one plain decode step (the batched baseline)."""

    def start(self, prompts, first_tokens):
        self.batch = len(prompts)

    def propose(self, histories, k, settings, generator) -> Proposal:
        empty = torch.zeros(len(histories), 0, dtype=torch.long)
        return Proposal(empty, empty)

    def accept(self, n_accepted, own, width):
        pass

    def cache_bytes(self) -> int:
        """Bytes of the drafter's own KV cache (none: it keeps no cache)."""
        return 0

    def select(self, rows):
        pass


def lookup_continuation(tokens: torch.Tensor, k: int, max_ngram: int, min_ngram: int) -> list[int]:
    """Prompt lookup (Saxena 2023, as in transformers): find the sequence's last n tokens earlier in itself,
    longest n first, and propose the k tokens that followed the earliest match."""
    length = len(tokens)
    for n in range(max_ngram, min_ngram - 1, -1):
        if length <= n:
            continue
        pattern = tokens[-n:]
        windows = tokens[:-1].unfold(0, n, 1)  # every n-gram that has at least one token after it
        hits = (windows == pattern).all(dim=1).nonzero()
        if len(hits):
            begin = int(hits[0]) + n
            return tokens[begin:begin + k].tolist()
    return []


class PromptLookupDrafter(NullDrafter):
    def __init__(self, max_ngram: int, min_ngram: int):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, histories, k, settings, generator) -> Proposal:
        found = [lookup_continuation(torch.tensor(h), k, self.max_ngram, self.min_ngram) for h in histories]
        width = max((len(f) for f in found), default=0)
        tokens = torch.zeros(len(histories), width, dtype=torch.long)
        valid = torch.zeros(len(histories), width, dtype=torch.long)
        for i, f in enumerate(found):
            tokens[i, :len(f)] = torch.tensor(f, dtype=torch.long)
            valid[i, :len(f)] = 1
        return Proposal(tokens, valid)


class ModelDrafter:
    """A smaller causal LM drafts k tokens, one forward each, keeping its own ragged KV cache.

    Its cache always holds every token of the sequence except the `pending` ones: the target's newest
    token, and after a fully accepted round also d_k (which the draft proposed but never fed). They are fed
    together at the start of the next round, left-padded, so no extra forward is spent on d_k.
    `vocab` maps the rows of a trimmed LM head to target token ids (None: the same vocabulary).
    """

    def __init__(self, model, vocab: torch.Tensor | None = None, target_vocab_size: int | None = None):
        self.model, self.vocab, self.target_vocab_size = model, vocab, target_vocab_size

    def start(self, prompts, first_tokens):
        self.device = next(self.model.parameters()).device
        self.state = RaggedBatch(self.model, len(prompts), self.device)
        tokens, valid = left_padded(prompts, self.device)
        self.state.feed(tokens, valid)
        self.pending = [[int(t)] for t in first_tokens]
        self.last = torch.zeros(len(prompts), 1, dtype=torch.long, device=self.device)  # drafts of the last round

    def _draw(self, logits, settings, generator):
        """One draft token per sequence (target ids) and, when sampling, its distribution over the target vocab."""
        if settings.greedy:
            index, probs = logits.argmax(dim=-1), None
        else:
            small = warped_probs(logits, settings)
            index = torch.multinomial(small, 1, generator=generator)[:, 0]
            probs = small
            if self.vocab is not None:
                probs = torch.zeros(small.shape[0], self.target_vocab_size, device=small.device)
                probs[:, self.vocab] = small
        token = index if self.vocab is None else self.vocab[index]
        return token, probs

    def propose(self, histories, k, settings, generator) -> Proposal:
        tokens, valid = left_padded(self.pending, self.device)
        logits = self.state.feed(tokens, valid)[:, -1]
        drafted, dists = [], []
        for j in range(k):
            token, probs = self._draw(logits, settings, generator)
            drafted.append(token)
            dists.append(probs)
            if j < k - 1:  # d_k is not fed now: if it is rejected, that forward would be wasted
                logits = self.state.feed(token[:, None])[:, -1]
        self.last = torch.stack(drafted, dim=1)
        probs = None if settings.greedy else torch.stack(dists, dim=1)
        return Proposal(self.last, torch.ones_like(self.last), probs)

    def accept(self, n_accepted, own, width):
        fed = width - 1  # d_1..d_{k-1} went through the draft this round
        self.state.keep(n_accepted.clamp(max=fed), fed)
        last, owns = self.last[:, -1].tolist(), own.tolist()
        self.pending = [[last[i], owns[i]] if n == width else [owns[i]] for i, n in enumerate(n_accepted.tolist())]

    def cache_bytes(self) -> int:
        return cache_nbytes(self.state.cache)

    def select(self, rows):
        self.state.select(rows)
        self.last = self.last[rows]
        self.pending = [self.pending[int(r)] for r in rows]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layer list of a causal LM (model.model.layers for Llama-like models)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: cannot find its decoder layers (expected model.model.layers); "
                         f"layer-based drafts support Llama-style models")
    return layers


def layer_subset(model, keep: list[int]):
    """A view of `model` that runs only the decoder layers in `keep` (weights shared, nothing copied).

    The layers keep their original index, so the view's cache has a slot per original layer and leaves the
    skipped ones empty; layer 0 must be kept because transformers sizes the attention mask from it.
    """
    if 0 not in keep:
        raise ValueError("a layer subset must keep layer 0 (the attention mask is sized from its cache)")
    layers = decoder_layers(model)
    view, inner = _shallow_copy(model), _shallow_copy(model.model)
    inner.layers = torch.nn.ModuleList([layers[i] for i in sorted(keep)])
    view.model = inner
    return view


def truncated_copy(model, n_layers: int):
    """A separate draft model: a deep copy of the first n_layers, the final norm and the LM head."""
    view = layer_subset(model, list(range(n_layers)))
    draft = copy.deepcopy(view)
    draft.config = copy.deepcopy(model.config)
    draft.config.num_hidden_layers = n_layers
    draft.model.config = draft.config
    return draft


def _shallow_copy(module: torch.nn.Module) -> torch.nn.Module:
    clone = copy.copy(module)
    clone._modules = dict(module._modules)  # copy.copy would share the submodule table with the original
    return clone
