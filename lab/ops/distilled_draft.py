"""The shipped distilled draft of SmolLM2 (data/models/smollm2-draft, made by `python -m lab.llm.distill`): its
shape (target embedding shared, a few target layers, a trimmed head) and how it loads beside a target."""
from __future__ import annotations

import copy
import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lab.paths import SHIPPED_DATA

DRAFT_DIR = SHIPPED_DATA / "models" / "smollm2-draft"
INIT_LAYERS = (0, 1, 2, 3)


def build_draft(target, layer_ids=INIT_LAYERS, vocab_ids: list[int] | None = None):
    """A LlamaForCausalLM-shaped draft: target embedding (shared), copies of some target layers, a trimmed
    head. Returns (draft model, vocab ids as a LongTensor mapping head rows to target token ids)."""


    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(layer_ids)
    config.layer_types = None
    config.tie_word_embeddings = False
    draft = AutoModelForCausalLM.from_config(config, dtype=target.dtype)
    draft.model.embed_tokens = target.model.embed_tokens  # shared, frozen: the draft reads target tokens
    for i, src in enumerate(layer_ids):
        draft.model.layers[i].load_state_dict(target.model.layers[src].state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    vocab = torch.tensor(vocab_ids, dtype=torch.long)
    head = torch.nn.Linear(config.hidden_size, len(vocab_ids), bias=False, dtype=target.dtype)
    head.weight.data.copy_(target.get_output_embeddings().weight.data[vocab])
    draft.lm_head = head
    draft.eval()
    return draft, vocab


def with_new_head(draft, old_vocab: torch.Tensor, target, vocab_ids: list[int]):
    """Swap the draft's head for one over `vocab_ids`: rows of tokens the old head had keep their trained
    values, new tokens start from the target's output embedding."""
    vocab = torch.tensor(vocab_ids, dtype=torch.long)
    weight = target.get_output_embeddings().weight.data[vocab].clone()
    old_row = {int(t): i for i, t in enumerate(old_vocab.tolist())}
    for i, t in enumerate(vocab_ids):
        if t in old_row:
            weight[i] = draft.lm_head.weight.data[old_row[t]]
    head = torch.nn.Linear(weight.shape[1], len(vocab_ids), bias=False, dtype=weight.dtype)
    head.weight.data.copy_(weight)
    draft.lm_head = head
    return draft, vocab


def trained_state(draft) -> dict:
    return {k: v for k, v in draft.state_dict().items() if not k.startswith("model.embed_tokens")}


def load_shipped_draft(target):
    """The distilled draft for `target` (SmolLM2) from data/models/smollm2-draft, on the target's device and
    dtype; raises FileNotFoundError naming the command that makes it."""

    recipe_path = DRAFT_DIR / "draft.json"
    if not recipe_path.exists():
        raise FileNotFoundError(f"no distilled draft at {DRAFT_DIR}; make one with `python -m lab.llm.distill`")
    recipe = json.loads(recipe_path.read_text())
    hidden, vocab_size = target.config.hidden_size, target.config.vocab_size
    if (hidden, vocab_size) != (576, 49152) or max(recipe["vocab_ids"]) >= vocab_size:
        raise ValueError(f"the distilled draft is made for SmolLM2-135M (hidden 576, vocab 49152); this target has "
                         f"hidden {hidden}, vocab {vocab_size}: use draft = 'truncated' or a draft model of your own")
    draft, vocab = build_draft(target, recipe["init_layers"], recipe["vocab_ids"])
    state = load_file(str(DRAFT_DIR / "model.safetensors"))
    draft.load_state_dict({k: v.to(target.dtype) for k, v in state.items()}, strict=False)
    device = next(target.parameters()).device
    return draft.to(device), vocab.to(device), recipe
