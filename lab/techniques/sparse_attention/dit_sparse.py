"""DiT sparse attention across steps (AdaSpa's "identify once, reuse": a DiT's sparse
pattern stays nearly the same across denoising steps, which Re-ttention also builds on).

At a refresh step (the first step, then every `refresh_every` sampler steps) every self-attention layer of the
denoiser computes dense attention and records, per image row, head and query, the k = ceil(keep_ratio x tokens)
keys of highest attention probability. At the steps between, each layer attends only to those keys: SDPA with
that boolean mask [batch, heads, queries, keys]. Cross-attention to a prompt's tokens is left dense. keep_ratio 1
keeps every key, and the layer's original processor runs untouched, so the images equal the baseline's exactly.
Re-ttention's correction of the dropped probability mass is not applied: the softmax renormalises over the kept
keys.

What the measurement shows on the shipped digits DiT: a 16x16 image in patches of 4 is 4 x 4 = 16 tokens, so a
layer's attention is a 16 x 16 matrix per head. Masked SDPA still computes every pair, and the refresh steps also
compute the probabilities once more to pick the keys, so no speedup is expected (the variant may be slower); what
it measures is the attended share (the pairs a sparse kernel would compute) and the quality cost against the
baseline's images (PSNR, SSIM, class accuracy, recorded by the runner). On a diffusers pipeline folder whose
transformer runs diffusers' AttnProcessor2_0 self-attention (PixArt) the same pattern applies to thousands of
tokens, where attention dominates; turning it into time needs a block-sparse kernel (FlexAttention with a
BlockMask of key blocks, lab/ops/flex.py) and a pattern chosen per block rather than per key, which also keeps the
stored pattern small (this reference stores a boolean per pair, tokens^2 x heads x rows per layer).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

from lab.errors import SpecError
from lab.techniques.base import knob, metric
from lab.techniques.slots import DenoiserTechnique

# Joint attention (image and text tokens in one softmax, with rotary embeddings for Flux) runs processors of its
# own that this technique does not compute; validation refuses them with this reason.
JOINT_ATTENTION = "its attention is joint image-text attention ({}), which the sparse processor does not compute"


@dataclass
class DiTSparseAttention(DenoiserTechnique):
    name = "dit_sparse_attention"
    family: ClassVar[str] = "sparse_attention"
    title = "DiT sparse attention (pattern reused across steps)"
    summary = ("Every refresh_every steps each self-attention layer computes dense attention and keeps, per head "
               "and query, its top keep_ratio of keys by attention probability; the steps between attend only to "
               "those keys. On the 16-token digits DiT masked SDPA computes every pair anyway: the measurement is "
               "the attended share and the quality cost, not time.")
    paper = ("Xia et al. 2025, Training-free and Adaptive Sparse Attention for Efficient Long Video Generation "
             "(AdaSpa, arXiv:2502.21079); Chen et al. 2025, Re-ttention: Ultra Sparse Visual Generation via "
             "Attention Statistical Reshape")
    idea = ("In a diffusion transformer every patch of the image attends to every other patch at every denoising step, "
            "although most of that attention lands on a few patches and the pattern changes slowly from step to step. "
            "This technique computes dense attention every few steps, remembers for each query the keys that got the "
            "most attention, and on the steps between attends only to those. A sparse kernel would then do a fraction "
            "of the attention work. The skipped keys are a small error that adds up over the steps, so refreshing too "
            "rarely or keeping too few keys changes the image.")
    paper_claim = ("AdaSpa: training-free sparse attention whose pattern is searched online and reused across "
                   "denoising steps speeds up long-video diffusion transformers by about 1.6x to 2x (1.78x on "
                   "HunyuanVideo) while keeping video quality.")
    picture = "attention_mask"
    denoisers: ClassVar[tuple[str, ...]] = ("dit",)
    unsupported_denoisers: ClassVar[dict[str, str]] = {
        "FluxTransformer2DModel": JOINT_ATTENTION.format("FluxAttnProcessor, with rotary embeddings"),
        "SD3Transformer2DModel": JOINT_ATTENTION.format("JointAttnProcessor2_0"),
    }
    metrics = (
        metric("dit_attended_share", "Attended share (DiT)", "%", "DiT sparse attention: query-key pairs of the "
               "denoiser's self-attention computed under the pattern, over the pairs dense attention computes, "
               "summed over every layer, head and call of the generation; refresh steps count as 100. Masked SDPA "
               "still computes every pair: this is what a sparse kernel would compute.", False),
        metric("dense_attention_steps", "Dense attention steps", "steps", "DiT sparse attention: sampler steps "
               "in which the self-attention ran dense (the first step and every refresh step after it).", None),
    )

    keep_ratio: float = knob(0.25, min=0.01, max=1.0, unit="share of keys",
                             help="Share of the keys each query keeps (per head), chosen by attention probability "
                                  "at the last refresh step: k = ceil(keep_ratio x tokens). 1.0 = dense attention.")
    refresh_every: int = knob(5, min=1, max=1000, unit="steps",
                              help="Compute dense attention and choose the kept keys again every this many sampler "
                                   "steps (the first step always); 1 = dense at every step.")

    def prepare_denoiser(self, call) -> None:
        self._layers(call.model)  # refuse a denoiser it cannot attach to before the warm-up, with the reason

    @contextlib.contextmanager
    def wrap_denoiser(self, call):
        # lazy: torch and diffusers load only when a technique runs; pages import every technique
        from lab.ops.dit_attention import PairCount, ReusedPatternProcessor

        layers = self._layers(call.model)
        originals = [layer.get_processor() for layer in layers]
        self._count = PairCount()  # read by measure() after the generation
        self._processors = [ReusedPatternProcessor(original, self.keep_ratio, self.refresh_every,
                                                   lambda: call.step_index, self._count) for original in originals]
        for layer, processor in zip(layers, self._processors):
            layer.set_processor(processor)
        try:
            yield
        finally:
            for layer, original in zip(layers, originals):
                layer.set_processor(original)

    def _layers(self, model) -> list:
        # lazy: torch and diffusers load only when a technique runs; pages import every technique
        from lab.ops.dit_attention import self_attention_layers

        layers, refused = self_attention_layers(model)
        if refused:
            raise SpecError(f"technique '{self.name}': {type(model).__name__} has attention the sparse processor "
                            f"does not compute: {', '.join(refused[:3])}{' ...' if len(refused) > 3 else ''}; "
                            f"allowed: denoisers whose self-attention runs diffusers' AttnProcessor2_0 (the digits "
                            f"DiT, DiT, PixArt)")
        if not layers:
            raise SpecError(f"technique '{self.name}': {type(model).__name__} has no self-attention layer to make "
                            f"sparse; allowed: DiT-style transformers (the digits DiT, DiT, PixArt)")
        return layers

    def measure(self, output) -> dict[str, float]:
        count = getattr(self, "_count", None)
        if count is None or count.share() is None:
            return {}
        return {"dit_attended_share": count.share(), "dense_attention_steps": float(len(count.dense_steps))}
