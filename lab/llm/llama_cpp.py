"""llama.cpp as a reference engine (engine = "llama_cpp"): the model's own GGUF run through llama-cpp-python.

The lab's built-in model is the dequantized Q4_1 GGUF, so llama.cpp on that same file is what someone deploying
the model would run: a row beside the lab's variants that says where a technique stands against the engine people
use. It takes no techniques and offers the interface of the lab's Engine (lab/llm/engine.py) that the runner and
the memory probe call: generate(), continuation_nll(), weight_bytes(), dtype_name.

llama-cpp-python is optional (minutes to compile; `make test` installs it), so llama_cpp is imported only inside
functions: pages and validation read this module without it.
"""
from __future__ import annotations

import ctypes
import importlib.util
import time
from pathlib import Path

import numpy as np

from lab.errors import SpecError
from lab.llm.models import BUILTIN_MODELS, _package_folder
from lab.ops.generation import Generation
from lab.ops.settings import GenerationSettings

PIN = "llama-cpp-python==0.3.36"
# llama.cpp allocates (and zeroes) the KV cache of n_ctx tokens when it opens the model, so it counts in the row's
# peak memory (8192 tokens of SmolLM2 in f16: 180 MiB): the runner sizes n_ctx from the spec's longest sequence
# (context_for), and this caps it
MAX_CONTEXT = 8192
CONTEXT_STEP = 256  # n_ctx rounded up to a multiple of this (llama.cpp pads its KV cache to 256 cells anyway)
BATCH = 512  # tokens per llama_decode call in a prefill (llama.cpp's default n_batch)
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default KV cache type is f16; the context here keeps the default


def gguf_path(model: str) -> Path:
    """The GGUF file llama.cpp runs for `model`: the built-in's own file, or the only *.gguf in a local folder.
    SpecError when there is none (a hub id has none here: the lab loads hub ids as transformers folders)."""
    if model in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[model]
        folder = _package_folder(builtin.package)
        path = folder / builtin.gguf_file if folder is not None else None
        if path is None or not path.is_file():
            raise SpecError(f"engine 'llama_cpp' runs the built-in model '{model}' from {builtin.gguf_file} in the "
                            f"PyPI package {builtin.package.replace('_', '-')}, which is not installed")
        return path
    if Path(model).is_dir():
        found = sorted(Path(model).glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if not found:
            raise SpecError(f"engine 'llama_cpp' needs a GGUF file, and the folder '{model}' has no *.gguf; "
                            f"allowed: a built-in model ({', '.join(BUILTIN_MODELS)}) or a folder with one *.gguf")
        raise SpecError(f"engine 'llama_cpp' needs one GGUF file, and the folder '{model}' has {len(found)} "
                        f"({', '.join(p.name for p in found)}); keep one *.gguf in the folder")
    raise SpecError(f"engine 'llama_cpp' needs the model's GGUF file, and '{model}' has none here (a hub id or a "
                    f"missing folder); allowed: a built-in model ({', '.join(BUILTIN_MODELS)}) or a local folder "
                    f"with one *.gguf")


def check_llama_cpp(model: str) -> None:
    """Refuse engine 'llama_cpp' before the run when llama-cpp-python is missing or the model has no GGUF."""
    # find_spec, not import: validation runs in the page process, and importing llama_cpp loads libllama
    if importlib.util.find_spec("llama_cpp") is None:
        raise SpecError(f"engine 'llama_cpp' needs llama-cpp-python: pip install {PIN} (make test installs it)")
    gguf_path(model)


def context_for(longest: int) -> int:
    """The n_ctx that holds a sequence of `longest` tokens: rounded up to CONTEXT_STEP, at most MAX_CONTEXT (a
    longer sequence is refused by generate with the reason)."""
    return min(MAX_CONTEXT, max(CONTEXT_STEP, -(-int(longest) // CONTEXT_STEP) * CONTEXT_STEP))


class LlamaCppEngine:
    """The model's GGUF in llama.cpp, behind the Engine interface. One llama.cpp context serves every call; its
    KV cache is emptied at the start of each, so no call reuses another's prefix (every variant does the same
    work), and tokens are fed as ids: the lab's tokenizer is made from the same GGUF, so the ids match."""

    techniques: list = []  # llama.cpp runs the GGUF as it is (check_engine refuses techniques)
    slots: dict = {}
    calibration = None

    def __init__(self, model: str, tokenizer, threads: int, n_ctx: int = MAX_CONTEXT):
        # lazy: llama_cpp is optional and loads libllama; only a llama_cpp variant's run reaches here
        import llama_cpp

        self._lib = llama_cpp
        self.path = gguf_path(model)
        self.tokenizer = tokenizer
        n_ctx = context_for(n_ctx)
        self.llama = self._open(n_ctx, threads)
        trained = llama_cpp.llama_model_n_ctx_train(self.llama.model)
        if 0 < trained < n_ctx:  # a GGUF trained on fewer positions: no context past them (rare: load twice)
            self.llama.close()
            self.llama = self._open(trained, threads)
        self.n_vocab = self.llama.n_vocab()
        self.n_ctx = self.llama.n_ctx()
        self.metadata = self.llama.metadata
        self.eos_ids = {int(t) for t in (tokenizer.eos_token_id, self.llama.token_eos())
                        if t is not None and int(t) >= 0}
        self._kv_bytes_per_token = self._kv_per_token()
        # one batch reused by every decode: room for BATCH tokens, each in one sequence (0)
        self._batch = llama_cpp.llama_batch_init(BATCH, 0, 1)

    def _open(self, n_ctx: int, threads: int):
        """The GGUF in llama.cpp with a context of n_ctx tokens (llama.cpp allocates its KV cache whole)."""
        return self._lib.Llama(
            model_path=str(self.path), n_ctx=n_ctx, n_batch=BATCH, n_threads=threads, n_threads_batch=threads,
            logits_all=False, verbose=False,
            # read the whole file into memory at load, as the lab's probe pages in the lab's weights: with mmap
            # the first generation would fault the weights in and the memory probe would count them as its rise
            use_mmap=False)  # no seed: sampling builds its own sampler, seeded per call (see _sampler)

    def __del__(self):
        batch = getattr(self, "_batch", None)
        if batch is not None:
            self._lib.llama_batch_free(batch)
            self._batch = None

    # --- what the runner and the memory probe read -------------------------------------------
    @property
    def dtype_name(self) -> str:
        """The GGUF's file type as llama.cpp names it ('Q4_1', 'Q8_0', 'F16'): most tensors' quantization."""
        # llama_model_desc is '<arch> <size> <file type>', and the file type is named from general.file_type
        buf = ctypes.create_string_buffer(256)
        self._lib.llama_model_desc(self.llama.model, buf, len(buf))
        desc = buf.value.decode("utf-8", "replace").split(" ", 2)
        if len(desc) == 3 and desc[2] and "unknown" not in desc[2]:
            return desc[2]
        return "gguf " + self.path.stem.rsplit(".", 1)[-1]  # the name's usual '.Q4_1' suffix

    def weights_to_page_in(self):
        """None: llama.cpp read its weights into memory when it loaded them (use_mmap=False)."""
        return None

    def weight_bytes(self) -> int:
        """Bytes of the GGUF's tensor data (llama_model_size: the sum over tensors, headers not counted)."""
        return int(self._lib.llama_model_size(self.llama.model))

    # --- llama.cpp's forward -------------------------------------------------------------------
    def _clear(self) -> None:
        """Empty the KV cache (metadata only: the next tokens overwrite the cells), so nothing of a previous call
        is reused."""
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self.llama.ctx), False)

    def _decode(self, tokens: list[int], start: int, first_output: int) -> None:
        """Run `tokens` at positions start.. in one llama_decode, asking logits for tokens[first_output:]
        (readable by their index in `tokens` until the next decode). At most BATCH tokens."""
        if start + len(tokens) > self.n_ctx:
            raise ValueError(f"llama.cpp's context holds {self.n_ctx} tokens; this call needs {start + len(tokens)}")
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0  # one sequence
            batch.logits[i] = i >= first_output
        code = self._lib.llama_decode(self.llama.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def _prefill(self, tokens: list[int]) -> None:
        """Run a prompt from position 0 in chunks of BATCH tokens, with logits for its last token only."""
        for lo in range(0, len(tokens), BATCH):
            chunk = tokens[lo:lo + BATCH]
            self._decode(chunk, lo, len(chunk) - 1 if lo + len(chunk) == len(tokens) else len(chunk))

    def _logits(self, i: int) -> np.ndarray:
        """The logits after token i of the last decode's batch (-1: the last output), a view of llama.cpp's
        buffer."""
        return np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self.llama.ctx, i), shape=(self.n_vocab,))

    def _sampler(self, settings: GenerationSettings):
        """llama.cpp's sampler for temperature + nucleus, in the lab's order (lab/ops/sampling.py): divide by the
        temperature, keep the top_p nucleus of that distribution, then draw with the call's seed."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(settings.temperature))
        if settings.top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(settings.top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(settings.seed))
        return chain

    def _kv_per_token(self) -> int:
        """KV bytes one token occupies: K and V of every layer, n_kv_heads x head_dim each, in f16."""
        lib, model, meta = self._lib, self.llama.model, self.metadata
        arch = meta.get("general.architecture", "")
        head_dim = lib.llama_model_n_embd(model) // lib.llama_model_n_head(model)
        k_dim = int(meta.get(f"{arch}.attention.key_length", head_dim))  # set when heads are not n_embd/n_head
        v_dim = int(meta.get(f"{arch}.attention.value_length", head_dim))
        kv_heads = lib.llama_model_n_head_kv(model)
        return lib.llama_model_n_layer(model) * kv_heads * (k_dim + v_dim) * KV_BYTES_PER_ELEMENT

    # --- the interface the runner calls --------------------------------------------------------
    def generate(self, prompt_ids: list[int], settings: GenerationSettings,
                 question_ids: list[int] | None = None) -> Generation:
        """Generate after prompt_ids + question_ids, timed per token as Engine.generate is (seconds from before the
        prefill until each token is known). Greedy is the argmax of llama.cpp's logits; sampling is llama.cpp's."""
        prompt = list(prompt_ids) + list(question_ids or [])
        if not prompt:
            raise ValueError("llama.cpp generates after a prompt of at least one token")
        if len(prompt) + settings.max_new_tokens > self.n_ctx:
            raise ValueError(f"llama.cpp's context holds {self.n_ctx} tokens; the prompt ({len(prompt)}) and "
                             f"{settings.max_new_tokens} new tokens do not fit")
        sampler = None if settings.greedy else self._sampler(settings)
        self._clear()
        tokens, times, trace = [], [], []
        stopped_by = "length"
        try:
            start = time.perf_counter()
            self._prefill(prompt)
            position = len(prompt)
            trace.append((position, position * self._kv_bytes_per_token))
            for _ in range(settings.max_new_tokens):
                if sampler is None:
                    token = int(np.argmax(self._logits(-1)))  # the first maximum, as torch's argmax on CPU
                else:
                    token = int(self._lib.llama_sampler_sample(sampler, self.llama.ctx, -1))
                times.append(time.perf_counter() - start)
                tokens.append(token)
                if token in self.eos_ids:
                    stopped_by = "eos"
                    break
                if len(tokens) == settings.max_new_tokens:
                    break
                self._decode([token], position, 0)  # decode: one token
                position += 1
                trace.append((position, position * self._kv_bytes_per_token))
        finally:
            if sampler is not None:
                self._lib.llama_sampler_free(sampler)
        # the cache holds every position it has seen: llama.cpp keeps all tokens (no eviction)
        return Generation(prompt_len=len(prompt), token_ids=tokens, token_times=times,
                          kv_bytes=position * self._kv_bytes_per_token, stopped_by=stopped_by, kv_trace=trace)

    def continuation_nll(self, prefix_ids: list[int], continuation_ids: list[int]) -> tuple[float, int]:
        """Negative log-likelihood of the continuation given the prefix, in one teacher-forced pass.

        The sequence prefix + continuation[:-1] is decoded with logits from the last prefix token on: the output
        at position len(prefix) - 1 + i predicts continuation[i]. Each is scored with a float64 log-softmax over
        the vocabulary: nll = sum_i logsumexp(z_i) - z_i[continuation[i]].
        """
        if not prefix_ids or not continuation_ids:
            raise ValueError("continuation_nll needs a prefix and a continuation of at least one token each")
        sequence = list(prefix_ids) + list(continuation_ids[:-1])
        first = len(prefix_ids) - 1
        self._clear()
        nll = 0.0
        # decode chunk by chunk and read each chunk's rows before the next decode overwrites them
        for lo in range(0, len(sequence), BATCH):
            chunk = sequence[lo:lo + BATCH]
            self._decode(chunk, lo, max(first - lo, 0))
            for i in range(max(first - lo, 0), len(chunk)):
                z = self._logits(i).astype(np.float64)
                top = z.max()
                log_norm = top + np.log(np.exp(z - top).sum())  # logsumexp, shifted so exp never overflows
                nll += float(log_norm - z[continuation_ids[lo + i - first]])
        return nll, len(continuation_ids)

