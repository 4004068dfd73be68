"""What each technique family changes in the floors, as a function of its knob: KV compression, KV and weight
quantization, speculative decoding, sparse attention. Diffusion caching is out of scope (DIFFUSION_CACHING)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from lab.errors import SpecError, shown
from lab.whatif.devices import Device
from lab.whatif.estimate import BYTES, Scenario, decode_step, prefill

DIFFUSION_CACHING = ("Diffusion caching is out of scope here: it reuses a denoiser's block outputs across sampler "
                     "steps, so its cost is per step and block of an image model, not per token of an LLM. The "
                     "Diffusion Lab measures it.")
BITS_DTYPE = {16: "bf16", 8: "int8", 4: "int4"}


@dataclass(frozen=True)
class Knobs:
    """One setting per family, as the page offers them."""
    kv_ratio: float = 4.0  # KV compression: the cache keeps 1 / kv_ratio of the tokens
    kv_bits: int = 4  # KV quantization: 8 or 4
    weight_bits: int = 4  # weight-only quantization: 8 or 4
    drafts: int = 4  # speculative decoding: k draft tokens per round
    acceptance: float = 0.7  # a: the chance each draft token is accepted
    draft_cost: float = 0.05  # c: one draft token's time as a share of one target decode step
    attended_share: float = 0.25  # sparse attention: s, the share of keys each query attends
    attention_share: float | None = None  # f: attention's share of the time; None: from the byte/FLOP model

    def __post_init__(self):
        checks = (("kv_ratio", self.kv_ratio, 1, 1000), ("drafts", self.drafts, 1, 64),
                  ("acceptance", self.acceptance, 0, 1), ("draft_cost", self.draft_cost, 0, 10),
                  ("attended_share", self.attended_share, 1e-6, 1))
        for field, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise SpecError(f"{field} must be from {low} to {high}, got {shown(value)}")
        for field, value in (("kv_bits", self.kv_bits), ("weight_bits", self.weight_bits)):
            if value not in (8, 4):
                raise SpecError(f"{field} must be 8 or 4, got {shown(value)}")
        if self.attention_share is not None and not 0 <= self.attention_share <= 1:
            raise SpecError(f"attention_share must be from 0 to 1, got {shown(self.attention_share)}")


@dataclass(frozen=True)
class Effect:
    """A technique's floors: decode_s per output token of each sequence, prefill_s for the whole context."""
    family: str
    setting: str
    decode_s: float
    prefill_s: float
    changes: str


def expected_tokens(drafts: int, acceptance: float) -> float:
    """Tokens one verify step yields with k drafts each accepted with chance a (Leviathan et al. 2023):
    1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a); k + 1 when a = 1."""
    if acceptance >= 1:
        return drafts + 1.0
    return (1 - acceptance ** (drafts + 1)) / (1 - acceptance)


def amdahl(time: float, share: float, factor: float) -> float:
    """Amdahl's law: a part `share` of `time` scaled by `factor`: time * ((1 - share) + share * factor)."""
    return time * ((1 - share) + share * factor)


def baseline(s: Scenario, device: Device) -> Effect:
    return Effect("Baseline", f"weights {s.weight_dtype}, KV {s.kv_dtype}", decode_step(s, device).floor_s,
                  prefill(s, device).floor_s, "nothing: the reference the others are set against")


def kv_compression(s: Scenario, device: Device, ratio: float) -> Effect:
    """The cache keeps n / r tokens: decode reads r times less KV; prefill still runs over all n tokens."""
    t = replace(s, kv_ratio=s.kv_ratio * ratio)
    return Effect("KV compression", f"{ratio:g}x fewer tokens", decode_step(t, device).floor_s,
                  prefill(t, device).floor_s, "KV bytes read per step / r; prefill unchanged")


def kv_quantization(s: Scenario, device: Device, bits: int) -> Effect:
    """K and V stored in int8 / int4: bytes per cached value 1 or 0.5 instead of the baseline's."""
    t = replace(s, kv_dtype=BITS_DTYPE[bits])
    return Effect("KV quantization", f"int{bits}", decode_step(t, device).floor_s, prefill(t, device).floor_s,
                  f"KV bytes x {bits / 8 / BYTES[s.kv_dtype]:g} (scales not counted)")


def weight_quantization(s: Scenario, device: Device, bits: int) -> Effect:
    """Weight-only int8 / int4: fewer bytes read per step; the matmuls still run in bf16 after dequantizing."""
    t = replace(s, weight_dtype=BITS_DTYPE[bits])
    return Effect("Weight quantization", f"int{bits} weight-only", decode_step(t, device).floor_s,
                  prefill(t, device).floor_s, f"weight bytes x {bits / 8 / BYTES[s.weight_dtype]:g}; compute in bf16")


def speculative(s: Scenario, device: Device, drafts: int, acceptance: float, draft_cost: float) -> Effect:
    """A round: k draft tokens at c * T1 each, then one target forward over k + 1 tokens per sequence (T_k+1,
    about T1 while memory-bound: the weights are read once). Per output token: (k * c * T1 + T_k+1) / E(k, a).
    The draft also prefills the prompt, at c times the target's prefill."""
    one = decode_step(s, device).floor_s
    verify = decode_step(s, device, tokens=drafts + 1).floor_s
    per_token = (drafts * draft_cost * one + verify) / expected_tokens(drafts, acceptance)
    return Effect("Speculative decoding", f"k={drafts}, a={acceptance:g}, c={draft_cost:g}", per_token,
                  prefill(s, device).floor_s * (1 + draft_cost),
                  f"{expected_tokens(drafts, acceptance):.2f} tokens per verify step")


def sparse_attention(s: Scenario, device: Device, attended: float, attention_share: float | None = None) -> Effect:
    """Each query attends a share s of the keys. With attention's share f of the time given (measured elsewhere):
    Amdahl, time * ((1 - f) + f * s). Without: the model itself, KV bytes read and attention FLOPs times s."""
    if attention_share is not None:
        base = baseline(s, device)
        return Effect("Sparse attention", f"s={attended:g}, f={attention_share:g}",
                      amdahl(base.decode_s, attention_share, attended),
                      amdahl(base.prefill_s, attention_share, attended), "Amdahl on the typed attention share")
    t = replace(s, attended_share=s.attended_share * attended)
    return Effect("Sparse attention", f"s={attended:g}", decode_step(t, device).floor_s, prefill(t, device).floor_s,
                  "KV bytes read and attention FLOPs x s")


def all_effects(s: Scenario, device: Device, knobs: Knobs) -> list[Effect]:
    """The baseline, then each family with its knob."""
    return [baseline(s, device), kv_compression(s, device, knobs.kv_ratio),
            kv_quantization(s, device, knobs.kv_bits), weight_quantization(s, device, knobs.weight_bits),
            speculative(s, device, knobs.drafts, knobs.acceptance, knobs.draft_cost),
            sparse_attention(s, device, knobs.attended_share, knobs.attention_share)]
