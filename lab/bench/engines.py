"""What runs a variant (its `engine`): the lab's own decode loop, transformers' generate() as the library's
version of a technique, or llama.cpp on the model's GGUF as the engine people deploy. The runner and the memory
probe make every variant's engine here, and validation asks here what each engine takes."""
from __future__ import annotations

import contextlib

from lab.errors import SpecError


def check_engine(where: str, engine: str, built: list, spec, check_model_exists: bool) -> None:
    """Refuse techniques an engine cannot run, and an engine the model or this machine cannot run."""
    if engine == "hf_generate":
        for t in built:
            if t.slot != "weights" and not t.hf_generate_counterpart:
                raise SpecError(f"{where}: engine 'hf_generate' runs transformers' generate(), which has no "
                                f"counterpart of '{t.name}'; allowed with it: weights techniques and "
                                f"{', '.join(_with_counterpart())}")
            refusal = t.hf_generate_refusal()
            if refusal:
                raise SpecError(f"{where}: engine 'hf_generate' cannot run '{t.name}' as set: {refusal}")
    elif engine == "llama_cpp":
        if built:
            raise SpecError(f"{where}: engine 'llama_cpp' runs the model's GGUF in llama.cpp as it is and takes no "
                            f"techniques (found {', '.join(t.name for t in built)}); remove them or use engine 'lab'")
        if spec.model_kind != "llm":
            raise SpecError(f"{where}: engine 'llama_cpp' runs LLMs; model '{spec.model}' is a {spec.model_kind} "
                            f"model; allowed engines for it: lab")
        if check_model_exists:
            # lazy: the engine's module is only needed when a variant asks for it
            from lab.llm.llama_cpp import check_llama_cpp
            check_llama_cpp(spec.model)


def _with_counterpart() -> list[str]:
    from lab.techniques import all_techniques  # lazy: the registry imports every technique module
    return [name for name, cls in all_techniques().items() if cls.hf_generate_counterpart]


def make_engine(variant, loaded, spec, techniques: list | None = None, n_ctx: int | None = None):
    """The object that generates for this variant: an Engine (the lab's loop, also behind hf_generate) or a
    LlamaCppEngine (its context holds n_ctx tokens: the run's longest sequence; None: llama_cpp.MAX_CONTEXT); both
    offer generate(prompt_ids, settings, question_ids) and continuation_nll()."""
    if variant.engine == "llama_cpp":
        # lazy: validation imports this module in the page process, which never loads torch or llama.cpp
        import torch

        from lab.llm.llama_cpp import MAX_CONTEXT, LlamaCppEngine
        threads = variant.threads or spec.threads or torch.get_num_threads()
        return LlamaCppEngine(spec.model, loaded.tokenizer, threads=threads, n_ctx=n_ctx or MAX_CONTEXT)
    # lazy: as above
    from lab.llm.engine import Engine
    from lab.techniques import build
    if techniques is None:
        techniques = build(variant.techniques, model_kind="llm")
    return Engine(loaded.model, loaded.tokenizer, techniques)


@contextlib.contextmanager
def variant_threads(threads: int):
    """Run with `threads` torch threads (0: leave them as the spec set them), and set them back after. Yields the
    count torch runs with inside, which the variant's environment records: what ran, not what was asked."""
    import torch  # lazy: as make_engine
    if not threads:
        yield torch.get_num_threads()
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
