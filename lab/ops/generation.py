"""The record of one generation: its tokens, when each arrived, and the KV bytes along the way (the decoding
slot's return type)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Generation:
    """One generation: the new tokens and when each one became available (seconds from the start)."""
    prompt_len: int
    token_ids: list[int]
    token_times: list[float]
    kv_bytes: int = 0  # the target's KV cache at the end, read from its tensors
    stopped_by: str = "length"  # "length" or "eos"
    extra: dict = field(default_factory=dict)
    # (tokens of the sequence the cache has seen, bytes it held then) after each forward, so variants can be
    # compared at equal token counts even when one stops earlier than the other
    kv_trace: list = field(default_factory=list)
    draft_kv_bytes: int = 0  # a draft model's own KV cache at the end (speculative decoding)

    def kv_bytes_at(self, tokens: int) -> int:
        """KV bytes held when the cache had seen at most `tokens` tokens (the last trace point up to there)."""
        held = [b for seen, b in self.kv_trace if seen <= tokens]
        return held[-1] if held else self.kv_bytes

    @property
    def tokens_seen(self) -> int:
        return self.kv_trace[-1][0] if self.kv_trace else self.prompt_len + max(len(self.token_ids) - 1, 0)

    @property
    def ttft(self) -> float:
        return self.token_times[0]

    @property
    def latency(self) -> float:
        return self.token_times[-1]

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first (the decode phase alone)."""
        n = len(self.token_times)
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else float("nan")
