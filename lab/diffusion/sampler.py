"""The pixel-space sampler: DDIM or DPM-Solver++ with classifier-free guidance, one explicit loop.

Guidance batches both halves in one denoiser call, ordered [unconditional; conditional] (the order
diffusers' FasterCache assumes), and mixes them as eps = eps_u + g * (eps_c - eps_u). g = 1 needs no
unconditional half, so the call carries the conditional rows only.

Techniques see one `DenoiserCall` per generation: the model, the step being computed and its timestep
(diffusers' PAB/FasterCache read it through a callback). Techniques hook the model itself (DeepCache too),
so a diffusers pipeline's own loop reaches them as this sampler does. Every model call runs inside the
model's cache context when it has one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from lab.diffusion.data import IMAGE_SIZE
from lab.diffusion.nets import NULL_CLASS
from lab.spec import SAMPLERS


def make_scheduler(name: str):
    betas = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    if name == "ddim":
        # clip_sample bounds the predicted clean image to the data range [-1, 1]
        return DDIMScheduler(**betas, clip_sample=True, set_alpha_to_one=True)
    if name == "dpmsolver++":
        # pixel space: thresholding bounds x0 the way DDIM's clipping does
        return DPMSolverMultistepScheduler(**betas, algorithm_type="dpmsolver++", solver_order=2,
                                           thresholding=True, sample_max_value=1.0)
    raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")


def architecture_of(model) -> str:
    return "unet" if "UNet" in type(model).__name__ else "dit"  # UNet2DModel, (Cached)UNet2DConditionModel


@dataclass
class DenoiserCall:
    """What the sampler and the techniques share during one generation."""
    model: torch.nn.Module
    steps: int
    guidance: float
    sampler: str
    model_name: str = ""
    step_index: int = 0
    timestep: int = 999
    info: dict = field(default_factory=dict)  # what a technique reports about the run (e.g. calibration)
    # (seed) -> None: one plain generation a technique may calibrate on (MagCache); a pipeline sets its own
    run_uncached: object = None
    uncached_inputs: str = "digits 0-9"  # what run_uncached generates, as a calibration file records it
    guidance_batch: bool | None = None  # a pipeline's [uncond; cond] batching, when it differs from ours

    def __post_init__(self):
        self.architecture = architecture_of(self.model)
        if self.run_uncached is None:  # the digits: one image per class, with an info of its own
            self.run_uncached = lambda seed: sample(dataclasses.replace(self, info={}), torch.arange(10), seed=seed)

    @property
    def uses_guidance(self) -> bool:
        return self.guidance != 1.0

    @property
    def guidance_batched(self) -> bool:
        """Whether each denoiser call carries [uncond; cond] halves (what FasterCache splits)."""
        return self.uses_guidance if self.guidance_batch is None else self.guidance_batch

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.architecture == "unet":
            return self.model(x, t, class_labels=labels).sample
        # keyword arguments only: FasterCache splits the guidance batch by argument name
        return self.model(hidden_states=x, timestep=t, class_labels=labels).sample


@dataclass
class SampleResult:
    images: torch.Tensor  # (B, 1, 16, 16) in [-1, 1]
    seconds: float
    steps_run: int


def initial_noise(batch: int, seed: int) -> torch.Tensor:
    return torch.randn((batch, 1, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample(call: DenoiserCall, labels: torch.Tensor, seed: int, on_step=None) -> SampleResult:
    """Generate one image per label. `on_step(i)` runs after each step (the block counter uses it)."""
    scheduler = make_scheduler(call.sampler)
    scheduler.set_timesteps(call.steps)  # also resets DPM-Solver's multistep history
    first = next(call.model.parameters())
    device, dtype = first.device, first.dtype
    x = initial_noise(len(labels), seed).to(device)
    labels = labels.to(device)
    if call.uses_guidance:
        labels_in = torch.cat([torch.full_like(labels, NULL_CLASS), labels])
    else:
        labels_in = labels
    context = call.model.cache_context if hasattr(call.model, "cache_context") else None
    if hasattr(call.model, "_reset_stateful_cache"):
        call.model._reset_stateful_cache()
    started = time.perf_counter()
    for i, t in enumerate(scheduler.timesteps):
        call.step_index, call.timestep = i, int(t)
        x_in = torch.cat([x, x]) if call.uses_guidance else x
        t_in = t.to(device).expand(len(x_in))  # 1-D: FasterCache halves it with the batch
        with context("cfg") if context else contextlib.nullcontext():
            # the sampler's state stays fp32 whatever the denoiser's dtype (a bf16 weights variant)
            eps = call.forward(x_in.to(dtype), t_in, labels_in).float()
        if call.uses_guidance:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + call.guidance * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x).prev_sample
        if on_step is not None:
            on_step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return SampleResult(images=x.clamp(-1, 1).cpu(), seconds=time.perf_counter() - started,
                        steps_run=len(scheduler.timesteps))
