from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lab.techniques.base import knob
from lab.techniques.diffusion_cache.hooked import DenoiserCache


@dataclass
class DeepCache(DenoiserCache):
    name = "deep_cache"
    title = "DeepCache"
    denoisers: ClassVar[tuple[str, ...]] = ("unet",)
    summary = ("UNet only. On every N-th step the whole UNet runs and the deep features entering the shallow "
               "up block are cached; on the steps between only the shallow branch (input conv, the first down "
               "block(s), the last up block(s)) runs, fed by the cached deep features and fresh skip connections.")
    paper = "Ma et al. 2023, DeepCache: Accelerating Diffusion Models for Free (arXiv:2312.00858)"

    interval: int = knob(3, min=1, max=50, unit="steps", help="Run the full UNet every N-th step (1 = never reuse).")
    branch: int = knob(0, min=0, max=8, help="Depth of the shallow branch that always runs: 0 = the outermost "
                                             "down/up block pair only; higher runs more of the UNet on cached steps.")

    def wrap_denoiser(self, call):
        import contextlib

        from lab.techniques.base import SpecError

        deepest = len(call.model.down_blocks) - 2
        if self.branch > deepest:
            raise SpecError(f"technique '{self.name}': branch {self.branch} is too deep for this UNet "
                            f"({len(call.model.down_blocks)} down blocks); allowed: 0 to {deepest}")

        @contextlib.contextmanager
        def swapped():
            plain, cache = call.forward, {}

            def forward(x, t, labels):
                full = call.step_index % self.interval == 0 or "deep" not in cache
                return unet_forward(call.model, x, t, labels, self.branch, cache, full)
            call.forward = forward
            try:
                yield
            finally:
                call.forward = plain
        return swapped()


def unet_forward(unet, sample, timestep, class_labels, branch: int, cache: dict, full: bool):
    """UNet2DModel.forward written out so the deep part can be skipped (diffusers has no hook for this).

    full=True runs everything and stores the input of up_blocks[-(branch + 1)] in cache["deep"]; full=False runs
    only down_blocks[:branch + 1] and up_blocks[-(branch + 1):], starting the up path from cache["deep"].
    Supports the plain Down/Up(Attn)Block2D layout the shipped UNet uses (no skip_conv blocks, no fourier time).
    """
    emb = unet.time_embedding(unet.time_proj(timestep).to(dtype=unet.dtype))
    if unet.class_embedding is not None:
        emb = emb + unet.class_embedding(class_labels).to(dtype=unet.dtype)
    hidden = unet.conv_in(sample)
    skips = [hidden]
    shallow = branch + 1
    down_blocks = unet.down_blocks if full else unet.down_blocks[:shallow]
    for block in down_blocks:
        hidden, res = block(hidden_states=hidden, temb=emb)
        skips += list(res)
    first_shallow_up = len(unet.up_blocks) - shallow
    if full:
        hidden = unet.mid_block(hidden, emb)
        for block in unet.up_blocks[:first_shallow_up]:
            n = len(block.resnets)
            hidden = block(hidden, tuple(skips[-n:]), emb)
            skips = skips[:-n]
        cache["deep"] = hidden
    else:
        # the skips the deep up blocks would have consumed are dropped; the shallow ones stay in order
        needed = sum(len(b.resnets) for b in unet.up_blocks[first_shallow_up:])
        skips = skips[:needed]
        hidden = cache["deep"]
    for block in unet.up_blocks[first_shallow_up:]:
        n = len(block.resnets)
        hidden = block(hidden, tuple(skips[-n:]), emb)
        skips = skips[:-n]
    hidden = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
    return hidden
