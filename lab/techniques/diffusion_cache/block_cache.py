from __future__ import annotations

from dataclasses import dataclass

from lab.techniques.base import knob
from lab.techniques.diffusion_cache.hooked import DenoiserCache

HOOK_NAME = "lab_block_reuse"


@dataclass
class BlockCache(DenoiserCache):
    name = "block_cache"
    title = "Block cache (every N steps)"
    summary = ("The plain scheme the others refine: every block is computed on every N-th step and its residual "
               "(output minus input) is stored; on the steps between each block adds its stored residual to its "
               "new input instead of computing.")
    paper = "Selvaraju et al. 2024, FORA: Fast-Forward Caching in Diffusion Transformer Acceleration (arXiv:2407.01425)"

    interval: int = knob(2, min=1, max=50, unit="steps", help="Compute every block on every N-th step (1 = never reuse).")

    def wrap_denoiser(self, call):
        import contextlib

        from diffusers.hooks import HookRegistry

        @contextlib.contextmanager
        def hooked():
            blocks = list(call.model.transformer_blocks)
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
    from diffusers.hooks import ModelHook

    class ResidualReuseHook(ModelHook):
        def __init__(self):
            super().__init__()
            self.residual = None

        def new_forward(self, module, hidden_states, *args, **kwargs):
            if call.step_index % interval == 0 or self.residual is None:
                out = self.fn_ref.original_forward(hidden_states, *args, **kwargs)
                self.residual = out - hidden_states
                return out
            return hidden_states + self.residual

    return ResidualReuseHook()
