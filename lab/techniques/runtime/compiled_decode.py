"""Compiled decode: a static KV cache and torch.compile of the decode step (gpt-fast's main trick)."""
from __future__ import annotations

from dataclasses import dataclass

from lab.errors import SpecError
from lab.techniques.base import knob, metric
from lab.techniques.slots import RuntimeTechnique

MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")
COMPILED_WORKLOADS = ("chat", "grounded", "needle", "context_qa")  # the ones that decode


@dataclass
class CompiledDecode(RuntimeTechnique):
    name = "compiled_decode"
    family = "runtime"
    title = "Compiled decode (static KV cache + torch.compile)"
    summary = ("Allocates the KV cache once at a fixed length and compiles the whole decode step with "
               "torch.compile (inductor: fused C++ kernels on CPU, Triton and optionally CUDA graphs on GPU). Same "
               "maths, fewer and larger kernels, no Python between the ops. Costs a compile (cached on disk) and "
               "a cache as long as the longest item.")
    paper = ("PyTorch team, gpt-fast: Accelerating Generative AI with PyTorch II (2023, github.com/pytorch-labs/"
             "gpt-fast); Ansel et al., PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode "
             "Transformation and Graph Compilation, ASPLOS 2024")
    idea = ("A small model spends much of each generated token not on arithmetic but on overhead: hundreds of small "
            "operations, each launched separately from Python, each reading and writing memory. Compiling the decode "
            "step traces it once into a graph and generates fused kernels (a normalisation, its scale and the next "
            "multiply in one pass), so the same maths runs with far fewer launches and memory round trips. The KV "
            "cache must then have a fixed size, so it is allocated once, as long as the longest text. Output is the "
            "same up to float rounding; the first run pays a compile.")
    paper_claim = ("Llama-2-7B on one A100: 25.5 tokens/s in eager PyTorch, 107 with torch.compile and a static KV "
                   "cache (4.2x), 157 adding int8 weights and 244 adding int4; speculative decoding stacks on top "
                   "(gpt-fast's blog post, batch 1; a GPU result, where launch overhead dominates more than on CPU).")
    picture = "compiled_step"
    batchable = False  # one sequence per static cache (lab/ops/static_batch.py)

    metrics = (
        metric("decode_compile_s", "Decode compile", "s", "Compiled decode: seconds the first call of each compiled "
               "step shape took (tracing and compiling, or loading the compiled kernels from the disk cache), spent in the "
               "warm-up, never in a timed repeat.", False),
    )

    mode: str = knob("default", choices=MODES, help=(
        "torch.compile mode: default (fused kernels), max-autotune-no-cudagraphs (also tries kernel variants: a "
        "longer compile), reduce-overhead (CUDA graphs: replays the whole step as one launch; GPU only)."))
    cache_block: int = knob(256, min=16, max=8192, unit="tokens", help=(
        "The static cache's length is the longest prompt plus its new tokens, rounded up to a multiple of this: "
        "items that round to the same length share one compiled shape."))

    def check_spec(self, spec) -> None:
        if spec.workload not in COMPILED_WORKLOADS:
            raise SpecError(f"technique '{self.name}' compiles the decode step; workload '{spec.workload}' times "
                            f"whole-window forwards and never decodes; allowed workloads: "
                            f"{', '.join(COMPILED_WORKLOADS)}")
        if spec.warmup < 1:
            raise SpecError(f"technique '{self.name}' compiles during the warm-up, and with warmup = 0 the compile "
                            f"would land in a timed repeat; allowed warmup: 1 to 10")
        if self.mode == "reduce-overhead" and spec.device == "cpu":
            raise SpecError(f"technique '{self.name}': mode 'reduce-overhead' is CUDA graphs, which a CPU run does not "
                            f"have; allowed on cpu: default, max-autotune-no-cudagraphs")

    def conflicts_with(self, other) -> str | None:
        if other.slot == "cache":
            return (f"'{other.name}' changes the cache as it runs (evicting or re-quantizing tokens), and a compiled "
                    f"step needs a static cache of fixed size and dtype")
        if other.slot == "attention":
            return (f"'{other.name}' runs an attention function of its own (with masks built per call), which the "
                    f"compiled graph would have to trace; compile the dense model or run the pattern eagerly")
        return None

    def compiles_per_shape(self) -> bool:
        return True  # an item longer than the others needs a longer static cache: a new shape, compiled again

    def make_batch(self, model, prompts: list[list[int]], max_new_tokens: int, widest: int):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from lab.ops.static_batch import CompiledStep, StaticBatch

        if len(prompts) != 1:
            raise ValueError(f"technique '{self.name}' runs batch 1 (got {len(prompts)} prompts)")
        if getattr(self, "_step", None) is None or self._step.model is not model:
            self._step = CompiledStep(model, self.cache_block, None if self.mode == "default" else self.mode)
        device = next(model.parameters()).device
        return StaticBatch(self._step, len(prompts[0]) + max_new_tokens + widest, widest, device)

    def run_metrics(self) -> dict[str, float]:
        step = getattr(self, "_step", None)
        return {"decode_compile_s": sum(step.compile_s.values())} if step is not None and step.compile_s else {}
