"""How a generation is asked for: how many tokens, greedy or sampled. Torch-free, so llama.cpp's engine and its
memory probe (a process that must not hold torch) can take the same settings as the lab's loop."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy (argmax)
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
