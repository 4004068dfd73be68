"""One batch of workload items through one variant's engine: what the runner times and the memory probe's child
runs. Apart from llm_runner so the probe's child imports no scorer (answer similarity, fidelity) its variant never
uses: they would count in its runtime memory and cost seconds per variant."""
from __future__ import annotations


def run_batch(engine, engine_name: str, batch: list, settings) -> list:
    """One batch of workload items through one variant: a list of Generations."""
    if engine_name == "hf_generate":
        return [engine.generate_hf(it.prompt_ids + (it.question_ids or []), settings) for it in batch]
    if len(batch) == 1:
        return [engine.generate(batch[0].prompt_ids, settings, batch[0].question_ids)]
    return engine.generate_batch([it.prompt_ids + (it.question_ids or []) for it in batch], settings)
