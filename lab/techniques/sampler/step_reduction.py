"""Fewer sampler steps (the decoding slot of a diffusion model): the baseline every denoiser cache is judged
against at equal compute."""
from __future__ import annotations

from dataclasses import dataclass

from lab.errors import SpecError
from lab.spec import SAMPLERS
from lab.techniques.base import knob
from lab.techniques.slots import DecodingTechnique


@dataclass
class StepReduction(DecodingTechnique):
    name = "step_reduction"
    family = "sampler"
    applies_to = ("diffusion",)
    title = "Fewer sampler steps"
    summary = ("The simple alternative every cache must beat: run the same sampler with fewer steps. At equal "
               "compute (steps / baseline steps = a cache's share of blocks computed) it shows whether reusing "
               "features is better than just taking larger steps. Optionally with another solver (DPM-Solver++ "
               "takes fewer steps for the same quality than DDIM).")
    paper = "Song et al. 2020, Denoising Diffusion Implicit Models (arXiv:2010.02502)"
    idea = ("A diffusion model turns noise into an image in a series of denoising steps, and each step costs one full "
            "pass through the network. Taking fewer, larger steps is the simplest way to save time: half the steps, "
            "about half the time. Samplers such as DDIM and DPM-Solver++ are designed to stay accurate with few steps. "
            "Too few steps and the image loses detail or changes, which is why every cache in this lab is compared "
            "with simply taking fewer steps at the same compute.")
    paper_claim = ("DDIM samples high-quality images 10x to 50x faster in wall-clock time than DDPM's 1,000 steps, "
                   "from the same trained model (image models on CIFAR-10, CelebA and LSUN).")
    picture = "step_reduction"

    steps: int = knob(25, min=1, max=1000, unit="steps", help="Sampler steps for this variant (the spec's "
                                                             "`steps` is the baseline's).")

    sampler: str = knob("same", choices=("same", *SAMPLERS),
                        help="Solver for this variant: 'same' keeps the spec's sampler (the equal-compute curve "
                             "uses these); another one shows what a better solver buys at fewer steps.")

    def check_spec(self, spec) -> None:
        if spec.sampler not in SAMPLERS and self.sampler != "same":  # a pipeline keeps its own scheduler
            raise SpecError(f"technique '{self.name}': sampler {self.sampler!r} cannot replace the scheduler of "
                            f"a diffusers pipeline; allowed: same")
        if self.steps >= spec.steps:
            raise SpecError(f"technique '{self.name}': steps {self.steps} is not fewer than the baseline's "
                            f"{spec.steps}; allowed: 1 to {spec.steps - 1}")

    def sampler_steps(self, steps: int) -> int:
        return self.steps

    def sampler_name(self, sampler: str) -> str:
        return sampler if self.sampler == "same" else self.sampler
