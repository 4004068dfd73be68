"""Block cache: every block computed on every N-th step, its residual reused in between (FORA's fixed interval; a
diffusers ModelHook of our own, as diffusers has no fixed-interval block cache)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.diffusion_cache.base import DenoiserCache

HOOK_NAME = "lab_block_reuse"


@dataclass
class BlockCache(DenoiserCache):
    name = "block_cache"
    title = "Block cache (every N steps)"
    summary = ("The plain scheme the others refine: every block is computed on every N-th step and its residual "
               "(output minus input) is stored; on the steps between each block adds its stored residual to its "
               "new input instead of computing.")
    paper = "Selvaraju et al. 2024, FORA: Fast-Forward Caching in Diffusion Transformer Acceleration (arXiv:2407.01425)"
    idea = ("From one denoising step to the next, what each transformer block adds to its input changes only a little. "
            "Block cache computes every block on every N-th step, stores what each block added (its residual), and on "
            "the steps between adds the stored residual again instead of computing the block. With N = 2 about half of "
            "the block work is skipped. The reused residuals are slightly stale, so the image drifts further from the "
            "baseline as N grows.")
    paper_claim = ("Stated qualitatively: FORA, training-free reuse of attention and MLP outputs at a fixed interval, "
                   "makes diffusion transformers several times faster while only minimally affecting IS and FID (DiT "
                   "models on ImageNet).")
    picture = "block_reuse"

    interval: int = knob(2, min=1, max=50, unit="steps", help="Compute every block on every N-th step (1 = never reuse).")

    def wrap_denoiser(self, call):
        # lazy: torch loads only when a technique runs; pages import every technique to build their forms
        from diffusers.hooks import HookRegistry

        from lab.ops.blocks import transformer_blocks

        @contextlib.contextmanager
        def hooked():
            blocks = transformer_blocks(call.model)
            for block in blocks:
                HookRegistry.check_if_exists_or_initialize(block).register_hook(_reuse_hook(call, self.interval),
                                                                               HOOK_NAME)
            try:
                yield
            finally:
                for block in blocks:
                    HookRegistry.check_if_exists_or_initialize(block).remove_hook(HOOK_NAME, recurse=False)
        return hooked()


def _reuse_hook(call, interval: int):
    # A diffusers ModelHook (written here because diffusers 0.42 has no fixed-interval block cache): the
    # registry swaps the block's forward and keeps the original reachable, as its own cache hooks do.
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    from diffusers.hooks import ModelHook

    class ResidualReuseHook(ModelHook):
        def __init__(self):
            super().__init__()
            self.residuals = None  # per returned tensor: output minus the input it updates

        def new_forward(self, module, *args, **kwargs):
            inputs = _updated_inputs(module, args, kwargs)
            if call.step_index % interval == 0 or self.residuals is None:
                out = self.fn_ref.original_forward(*args, **kwargs)
                outs = out if isinstance(out, tuple) else (out,)
                # None: a stream the block no longer returns (SD3's last block drops the text stream)
                self.residuals = [None if o is None else o - i for o, i in zip(outs, inputs)]
                return out
            reused = tuple(None if r is None else i + r for i, r in zip(inputs, self.residuals))
            return reused if len(reused) > 1 else reused[0]

    return ResidualReuseHook()


def _updated_inputs(block, args, kwargs) -> list:
    """The inputs a block's outputs update, in output order: hidden states alone, or, for a block that
    returns a tuple (Flux: encoder and image streams), what diffusers' block registry says each slot holds."""
    # lazy: torch loads only when a technique runs; pages import every technique to build their forms
    from diffusers.hooks._helpers import TransformerBlockRegistry

    try:
        meta = TransformerBlockRegistry.get(type(block))
    except ValueError:  # not a registered block: a DiT-style block taking and returning hidden states
        return [args[0] if args else kwargs["hidden_states"]]
    hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
    if meta.return_encoder_hidden_states_index is None:
        return [hidden]
    encoder = meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)
    slots = {meta.return_hidden_states_index: hidden, meta.return_encoder_hidden_states_index: encoder}
    return [slots[i] for i in sorted(slots)]
