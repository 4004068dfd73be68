"""A decoder-only LLM's shape (Llama layout) from a Hugging Face config.json or from typed numbers, and its
parameter count. Nonsense is refused with a SpecError naming the field and its allowed range."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lab.errors import SpecError, shown
from lab.textfile import MODEL_CONFIG_LIMIT, read_text_file

# Allowed ranges of each typed size: wide enough for any real model (Llama 3 405B has 126 layers, hidden 16384,
# vocab 128256; Gemma's vocab is 256000), narrow enough to catch a typo.
LIMITS = {
    "layers": (1, 1_000),
    "hidden": (1, 1_000_000),
    "heads": (1, 10_000),
    "kv_heads": (1, 10_000),
    "head_dim": (1, 10_000),
    "intermediate": (1, 10_000_000),
    "vocab": (1, 10_000_000),
}

# The names a size goes by across transformers configs (Llama style first, then GPT-2 / OPT style).
CONFIG_KEYS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "heads": ("num_attention_heads", "n_head"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "head_dim": ("head_dim",),
    "intermediate": ("intermediate_size", "n_inner", "ffn_dim"),
    "vocab": ("vocab_size",),
}
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


@dataclass(frozen=True)
class ModelShape:
    """The sizes that set an LLM's weights, KV cache and FLOPs. Llama layout: q/k/v/o projections, a gated MLP
    (gate, up, down), two RMSNorms per layer and a final one; `tied`: the LM head is the embedding matrix."""
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = True
    name: str = "typed shape"

    @property
    def attention_params(self) -> int:
        """Per layer: q and o are hidden x (heads * head_dim), k and v hidden x (kv_heads * head_dim)."""
        return self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)

    @property
    def mlp_params(self) -> int:
        """Per layer: gate and up are hidden x intermediate, down intermediate x hidden."""
        return 3 * self.hidden * self.intermediate

    @property
    def embedding_params(self) -> int:
        """vocab x hidden, once when tied (the LM head reuses it), twice when not."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        """All parameters: embeddings + layers * (attention + MLP + 2 norms of `hidden`) + the final norm."""
        per_layer = self.attention_params + self.mlp_params + 2 * self.hidden
        return self.embedding_params + self.layers * per_layer + self.hidden

    @property
    def matmul_params(self) -> int:
        """Parameters a token multiplies with (2 FLOPs each): every layer's projections and the LM head
        (vocab x hidden). Norms are elementwise, and the input embedding is a lookup, not a matmul."""
        return self.layers * (self.attention_params + self.mlp_params) + self.vocab * self.hidden

    @property
    def read_params(self) -> int:
        """Parameters one decode step reads from memory: all but an untied input embedding, of which a step
        gathers only the rows of its tokens (a tied matrix is read whole as the LM head)."""
        return self.params - (0 if self.tied else self.vocab * self.hidden)


def checked_size(field: str, value) -> int:
    """A whole number within LIMITS[field], or a SpecError naming the field and the range."""
    low, high = LIMITS[field]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{field} must be a whole number from {low:,} to {high:,}, got {shown(value)}")
    return value


def shape_from_numbers(layers, hidden, heads, kv_heads, head_dim, intermediate, vocab, tied: bool = True,
                       name: str = "typed shape") -> ModelShape:
    """A checked ModelShape from typed numbers. Grouped-query attention needs kv_heads to divide heads."""
    sizes = {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
             "intermediate": intermediate, "vocab": vocab}
    sizes = {field: checked_size(field, value) for field, value in sizes.items()}
    if sizes["heads"] % sizes["kv_heads"]:
        raise SpecError(f"kv_heads must divide heads ({sizes['heads']}): grouped-query attention shares each KV "
                        f"head among heads / kv_heads query heads; got kv_heads={sizes['kv_heads']}")
    return ModelShape(**sizes, tied=bool(tied), name=name)


def shape_from_config(config: dict, name: str = "config.json") -> ModelShape:
    """A ModelShape from a transformers config dict (a multimodal config's text_config is used). Defaults as
    transformers has them: kv_heads = heads, head_dim = hidden / heads, intermediate = 4 * hidden, tied."""
    if not isinstance(config, dict):
        raise SpecError(f"a config must be a JSON object, got {shown(config)}")
    if isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    if any(config.get(key) for key in MOE_KEYS):
        raise SpecError(f"{name}: mixture-of-experts configs are not modelled (the calculator assumes one dense MLP "
                        f"per layer); type the shape of the active experts in instead")
    sizes = {field: next((config[k] for k in keys if k in config), None) for field, keys in CONFIG_KEYS.items()}
    for field in ("layers", "hidden", "heads", "vocab"):
        if sizes[field] is None:
            raise SpecError(f"{name}: no {field} ({' or '.join(CONFIG_KEYS[field])}); is this an LLM's config?")
    heads, hidden = sizes["heads"], sizes["hidden"]
    if sizes["kv_heads"] is None:
        sizes["kv_heads"] = heads
    if sizes["head_dim"] is None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        sizes["head_dim"] = hidden // heads
    if sizes["intermediate"] is None and isinstance(hidden, int):
        sizes["intermediate"] = 4 * hidden
    return shape_from_numbers(**sizes, tied=config.get("tie_word_embeddings", True) is not False, name=name)


def read_config(path: str | Path) -> dict:
    """The config dict of a local model folder or config.json file (SpecError when it cannot be read). The file
    is checked before it is opened (a regular file, at most MODEL_CONFIG_LIMIT bytes, UTF-8 text)."""
    path = Path(path).expanduser()
    file = path / "config.json" if path.is_dir() else path
    if not file.exists():
        raise SpecError(f"no config.json at {file}: give a local model folder or its config.json")
    text = read_text_file(file, MODEL_CONFIG_LIMIT, "model's config.json", SpecError)
    try:
        return json.loads(text)
    except ValueError as err:
        raise SpecError(f"{file} is not a readable JSON config: {err}") from None


def shape_from_path(path: str | Path, name: str | None = None) -> ModelShape:
    """The shape of a local model folder or config.json file."""
    return shape_from_config(read_config(path), name or Path(path).name)
