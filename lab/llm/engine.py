"""An explicit decode loop in the style of gpt-fast: prefill once, then one forward per new token.

The Engine applies a variant's techniques through the hooks of their slots (lab/techniques/slots.py), in order:
  weights   -> transform_weights(): a copy of the model (the loaded original is shared and never mutated)
  attention -> attention_implementation(): the function registered with transformers, switched in per call
  cache     -> make_cache() and cache_hooks(): the KV cache the loop writes into, and hooks around one generation
  decoding  -> decode_batch(): the technique owns the loop (draft/verify through draft_verify() below)
  denoiser  -> refused: an LLM has no denoiser
"""
from __future__ import annotations

import contextlib
import time

import torch
from transformers import DynamicCache

from lab.llm.models import load_llm
from lab.llm.speculative import AdaptiveK, speculative_generate
from lab.llm.workloads import calibration_windows
from lab.ops.calibration import Calibration
from lab.ops.drafting import NullDrafter
from lab.ops.generation import Generation
from lab.ops.nbytes import cache_nbytes, model_bytes
from lab.ops.ragged import RaggedBatch
from lab.ops.sampling import GenerationSettings, sample_next
from lab.techniques.slots import refuse_unused_slots

CALIBRATION_SOURCE = "1,024 tokens of CPython's pydoc topic 'typesmapping' (never scored)"


class Engine:
    """A model prepared for one variant, plus the loop that generates with it."""

    def __init__(self, model, tokenizer, techniques: list | None = None):
        self.tokenizer = tokenizer
        self.techniques = list(techniques or [])
        self.slots = {t.slot: t for t in self.techniques}
        refuse_unused_slots(self.techniques, "llm", "an LLM's decode loop")
        for t in self.techniques:  # refuse before the run what cannot attach to this model
            t.check_model(model)
        self.calibration = Calibration(calibration_windows(tokenizer), CALIBRATION_SOURCE)
        weights = self.slots.get("weights")
        if weights is not None and weights.needs_calibration:
            model = weights.transform_weights(model, self.calibration)
        elif weights is not None:
            model = weights.transform_weights(model)
        for t in self.techniques:
            if t.needs_calibration and t.slot != "weights":
                t.calibrate(model, self.calibration)
        self.model = model
        self.device = next(model.parameters()).device
        self.eos_ids = _eos_ids(model, tokenizer)
        # The attention implementation lives in the (shared) config, so it is switched for the duration of
        # each call rather than by copying the model: many variants share one set of weights.
        self.attention = None
        if "attention" in self.slots:
            self.attention = self.slots["attention"].attention_implementation()
        elif "cache" in self.slots:  # a cache technique with an attention of its own never meets one above
            self.attention = self.slots["cache"].attention_needed()

    @contextlib.contextmanager
    def _prepared(self, cache=None):
        """Switch in this variant's attention and cache hooks for one call; always switch back."""
        previous = self.model.config._attn_implementation
        if self.attention and self.attention != previous:
            self.model.set_attn_implementation(self.attention)
        hooks = contextlib.nullcontext()
        if cache is not None and "cache" in self.slots:
            hooks = self.slots["cache"].cache_hooks(self.model, cache)
        try:
            with hooks as tracker:
                yield tracker
        finally:
            if self.model.config._attn_implementation != previous:
                self.model.set_attn_implementation(previous)

    # --- building blocks -----------------------------------------------------------------------
    def new_cache(self):
        if "cache" in self.slots:
            return self.slots["cache"].make_cache(self.model)
        return DynamicCache(config=self.model.config)

    def forward(self, input_ids: torch.Tensor, cache, start: int, logits_to_keep: int = 1) -> torch.Tensor:
        """Run the model over `input_ids` [batch, n] at positions start.., appending to `cache`.

        Positions are passed explicitly: once a KV method evicts tokens, the cache's length is no longer
        the position of the next token, and RoPE must see the true one.
        """
        positions = torch.arange(start, start + input_ids.shape[1], device=self.device)[None]
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, position_ids=positions,
                         logits_to_keep=logits_to_keep)
        return out.logits

    def target_batch(self, prompts: list[list[int]], settings: GenerationSettings, widest: int):
        """The batch the draft/verify loop feeds the target through: a RaggedBatch over a growing cache, or the
        runtime technique's own (a static cache and a compiled step; `widest`: the most tokens one feed takes)."""
        if "runtime" in self.slots:
            return self.slots["runtime"].make_batch(self.model, prompts, settings.max_new_tokens, widest)
        return RaggedBatch(self.model, len(prompts), self.device)

    def load_model(self, name: str):
        """Another LLM on this engine's device (a draft model a decoding technique names)."""
        return load_llm(name, str(self.device))

    @property
    def dtype_name(self) -> str:
        """The weights' dtype as the run's environment shows it ('float32', 'bfloat16')."""
        return str(next(self.model.parameters()).dtype).replace("torch.", "")

    def weights_to_page_in(self):
        """What the memory probe reads once before measuring (the model this variant runs)."""
        return self.model

    def weight_bytes(self) -> int:
        return model_bytes(self.model) + sum(t.extra_weight_bytes(self) for t in self.techniques)

    # --- the loop ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], settings: GenerationSettings,
                 question_ids: list[int] | None = None) -> Generation:
        """Generate after `prompt_ids`. With `question_ids`, the prompt is a context that the cache technique
        compresses first and the question follows uncompressed (kvpress's protocol)."""
        if "decoding" in self.slots:  # no cache technique beside a draft: the question is plain prompt
            return self.slots["decoding"].decode_batch(self, [prompt_ids + (question_ids or [])], settings)[0]
        if "runtime" in self.slots:  # its batch object runs the steps: the draft/verify loop with no drafts
            return self.generate_batch([prompt_ids + (question_ids or [])], settings)[0]
        generator = None
        if not settings.greedy:
            generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        cache = self.new_cache()
        tokens, times, trace = [], [], []
        with self._prepared(cache) as tracker:
            start = time.perf_counter()
            logits = self.forward(torch.tensor([prompt_ids], device=self.device), cache, 0)  # prefill
            position = len(prompt_ids)
            if question_ids:
                logits = self.forward(torch.tensor([question_ids], device=self.device), cache, position)
                position += len(question_ids)
            trace.append((position, cache_nbytes(cache)))
            stopped_by = "length"
            for _ in range(settings.max_new_tokens):
                next_token = sample_next(logits[:, -1, :], settings, generator)
                token = int(next_token.item())  # .item() synchronises, so the timestamp is honest on GPU too
                times.append(time.perf_counter() - start)
                tokens.append(token)
                if token in self.eos_ids:
                    stopped_by = "eos"
                    break
                if len(tokens) == settings.max_new_tokens:
                    break
                logits = self.forward(next_token[:, None], cache, position)  # decode: one token
                position += 1
                trace.append((position, cache_nbytes(cache)))  # ~30 tensor sizes summed: µs beside a forward
        extra = {}
        if tracker is not None and hasattr(tracker, "kept_positions"):
            extra["kept_positions"] = tracker.kept_positions()
        return Generation(prompt_len=len(prompt_ids) + len(question_ids or []), token_ids=tokens,
                          token_times=times, kv_bytes=cache_nbytes(cache), stopped_by=stopped_by, extra=extra,
                          kv_trace=trace)

    @torch.inference_mode()
    def generate_batch(self, prompts: list[list[int]], settings: GenerationSettings) -> list[Generation]:
        """Generate after several prompts at once (batch > 1): prompts left-padded into one ragged batch,
        each sequence stopping on its own. Without a decoding technique every round is one plain step."""
        if "decoding" in self.slots:
            return self.slots["decoding"].decode_batch(self, prompts, settings)
        if "cache" in self.slots:
            raise ValueError(f"batch > 1 is not supported with the cache technique '{self.slots['cache'].name}'")
        gens = self.draft_verify(NullDrafter(), prompts, settings, k=1)
        for g in gens:
            g.extra = {}
        return gens

    def draft_verify(self, drafter, prompts: list[list[int]], settings: GenerationSettings, k: int,
                     adaptive: bool = False, k_max: int = 0) -> list[Generation]:
        """The draft/verify loop (lab/llm/speculative.py) over a ragged batch, with `drafter` proposing up to
        k tokens per round. A decoding technique calls this with its own drafter; plain batches with none."""
        return speculative_generate(self, drafter, prompts, settings, AdaptiveK(k, adaptive, max(k_max, k)))

    @torch.inference_mode()
    def continuation_nll(self, prefix_ids: list[int], continuation_ids: list[int]) -> tuple[float, int]:
        """Negative log-likelihood of a continuation given a prefix that the cache technique may compress.

        The prefix is prefilled (and compressed, as a context would be). The continuation is then scored
        teacher-forced: in one forward that attends to what the cache kept, or, when the cache technique also
        compresses while decoding, one token at a time, so the score sees every decode-time prune.
        """
        cache = self.new_cache()
        cont = torch.tensor([continuation_ids], device=self.device)
        with self._prepared(cache):
            last = self.forward(torch.tensor([prefix_ids], device=self.device), cache, 0)[:, -1]
            if self.compresses_while_decoding:
                start = len(prefix_ids)
                steps = [self.forward(cont[:, i:i + 1], cache, start + i) for i in range(cont.shape[1] - 1)]
                rest = torch.cat(steps, dim=1) if steps else last[:, None][:, :0]
            else:
                rest = self.forward(cont[:, :-1], cache, len(prefix_ids), logits_to_keep=0)
        logits = torch.cat([last[:, None], rest], dim=1)[0].float()
        nll = torch.nn.functional.cross_entropy(logits, cont[0], reduction="sum")
        return float(nll), len(continuation_ids)

    @property
    def compresses_while_decoding(self) -> bool:
        cache = self.slots.get("cache")
        return bool(cache is not None and getattr(cache, "compress_every", 0))

    @torch.inference_mode()
    def generate_hf(self, prompt_ids: list[int], settings: GenerationSettings) -> Generation:
        """The same generation through transformers' generate(), timed per token by a streamer.

        Used as the reference the lab's loop is measured against (bench_overhead) and checked equal to, and as
        engine 'hf_generate': the variant's weights as prepared, and its decoding technique as transformers'
        own counterpart (assisted generation: prompt_lookup_num_tokens, assistant_model, assistant_early_exit),
        from the technique's hf_generate_options(). Assisted generation takes batch 1 (validation refuses more),
        a cache of ours, and a streamer, which it hands each round's tokens together.
        """
        streamer = _TimingStreamer()
        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([prompt_ids], device=self.device)
        kwargs = dict(do_sample=False) if settings.greedy else dict(
            do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        decoding = self.slots.get("decoding")
        options = decoding.hf_generate_options(self) if decoding is not None else {}
        # transformers (5.x) reads these from the assistant's own generation_config, not from generate()'s
        # arguments (the assistant of assistant_early_exit is the target): set them there for this call only
        assistant = options.get("assistant_model", self.model if "assistant_early_exit" in options else None)
        keys = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")
        saved = {key: getattr(assistant.generation_config, key) for key in keys if key in options} if assistant else {}
        for key in saved:
            setattr(assistant.generation_config, key, options[key])
        if not settings.greedy:
            torch.manual_seed(settings.seed)
        try:
            streamer.start = time.perf_counter()
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=settings.max_new_tokens, past_key_values=cache,
                                      streamer=streamer, eos_token_id=sorted(self.eos_ids),
                                      pad_token_id=sorted(self.eos_ids)[0], **kwargs, **options)
        finally:
            for key, value in saved.items():
                setattr(assistant.generation_config, key, value)
        tokens = out[0, len(prompt_ids):].tolist()
        stopped_by = "eos" if tokens and tokens[-1] in self.eos_ids else "length"
        extra = {}
        if decoding is not None:  # each put() after the prompt is one target forward, the first the prefill's
            extra = {"target_forwards": len(streamer.per_put) - 1,
                     "accepted": sum(n - 1 for n in streamer.per_put)}
        return Generation(prompt_len=len(prompt_ids), token_ids=tokens, token_times=streamer.times[:len(tokens)],
                          kv_bytes=cache_nbytes(cache), stopped_by=stopped_by, extra=extra)


class _TimingStreamer:
    """generate() calls put() once with the prompt, then once per target forward with the tokens it made: one in
    plain decoding, the accepted drafts and the target's own token in assisted decoding. Each token is recorded
    as arriving when its put() did (batch 1: put() gets [1] or [1, n])."""

    def __init__(self):
        self.start = 0.0
        self.times: list[float] = []
        self.per_put: list[int] = []  # tokens each target forward brought
        self._seen_prompt = False

    def put(self, value):
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        now = time.perf_counter() - self.start
        self.times.extend([now] * int(value.numel()))
        self.per_put.append(int(value.numel()))

    def end(self):
        pass


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}

