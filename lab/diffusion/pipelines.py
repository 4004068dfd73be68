"""Diffusers pipelines the user points the lab at: a local folder with a model_index.json (saved with
save_pretrained, or a snapshot in the local Hugging Face cache), e.g. Flux, PixArt or Stable Diffusion.

The pipeline runs its own loop, scheduler and guidance; the lab hooks its denoiser (the `transformer` or
`unet` component) for one generation and follows it through two pipeline hooks: a forward pre-hook on the
denoiser reads the current timestep from the scheduler (PAB and FasterCache ask for it), and
`callback_on_step_end` marks each step's end (the block counter and every-N-step caches read it).
Nothing here downloads: loading is local_files_only.
"""
from __future__ import annotations

import base64
import contextlib
import inspect
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from lab.diffusion.loaded import LoadedDenoiser
from lab.errors import SpecError
from lab.paths import model_file
from lab.textfile import MODEL_CONFIG_LIMIT, read_text_file

DENOISER_COMPONENTS = ("transformer", "unet")
IMAGE_INPUTS = ("image", "mask_image", "control_image", "video")  # what image-to-image pipelines take
THUMBNAIL = 128  # stored image side in pixels: enough to see a difference, small enough for the store


@dataclass(frozen=True)
class PipelineInfo:
    folder: Path
    pipeline_class: str
    denoiser: str  # the component name: transformer or unet
    denoiser_class: str

    @property
    def architecture(self) -> str:
        return "unet" if self.denoiser == "unet" else "dit"


def pipeline_folder(name: str) -> Path | None:
    """The folder of a pipeline: a local folder with model_index.json, or a hub id's cached snapshot."""
    index = model_file(name, "model_index.json")
    return index.parent if index is not None else None


def pipeline_info(name: str) -> PipelineInfo:
    """What the lab needs to know before loading, read from model_index.json; SpecError when it cannot run."""
    folder = pipeline_folder(name)
    if folder is None:
        raise SpecError(f"'{name}' is not a diffusers pipeline folder (no model_index.json)")
    index = _read_index(folder / "model_index.json")
    found = [c for c in DENOISER_COMPONENTS if isinstance(index.get(c), list) and index[c][1]]
    if not found:
        raise SpecError(f"pipeline '{name}' ({index.get('_class_name')}) has no denoiser component; the lab "
                        f"hooks one of: {', '.join(DENOISER_COMPONENTS)}")
    return PipelineInfo(folder=folder, pipeline_class=index.get("_class_name", "?"), denoiser=found[0],
                        denoiser_class=index[found[0]][1])


def _read_index(file: Path) -> dict:
    text = read_text_file(file, MODEL_CONFIG_LIMIT, "pipeline's model_index.json", SpecError)
    try:
        index = json.loads(text)
    except ValueError as e:
        raise SpecError(f"{file}: not valid JSON ({e}); a diffusers pipeline's model_index.json is a JSON "
                        f"object") from None
    if not isinstance(index, dict):
        raise SpecError(f"{file}: a JSON {type(index).__name__}, not an object; a diffusers pipeline's "
                        f"model_index.json is a JSON object")
    return index


def load_pipeline(name: str, device: str):
    # lazy: torch loads only to run; validation and pages read this module
    import torch
    from diffusers import DiffusionPipeline

    info = pipeline_info(name)
    # fp32 on a CPU (no fast bf16 kernels there); bf16 on a GPU, as these pipelines are published
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    try:
        # trust_remote_code=False: a pipeline file or component module shipped in the folder is never imported
        pipe = DiffusionPipeline.from_pretrained(info.folder, torch_dtype=dtype, local_files_only=True,
                                                 trust_remote_code=False)
    except (OSError, ValueError, ImportError) as e:
        raise SpecError(f"pipeline '{name}' could not be loaded from {info.folder}: {e}") from None
    check_text_to_image(pipe)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            part.eval().requires_grad_(False)
    from lab.ops.blocks import make_cacheable  # lazy: validation reads this module; blocks imports torch

    denoiser = make_cacheable(getattr(pipe, info.denoiser))
    return LoadedDenoiser(name=name, kind="diffusion", model=denoiser, classifier=None,
                          architecture=info.architecture, device=device, dtype=str(dtype).replace("torch.", ""),
                          source=f"{info.pipeline_class} from {info.folder}", pipeline=pipe)


def check_text_to_image(pipe) -> None:
    """The lab runs text-to-image pipelines: refuse one that needs more than a prompt (an image to edit)."""
    params = inspect.signature(pipe.__call__).parameters.values()
    required = [p.name for p in params if (p.default is inspect.Parameter.empty and p.kind not in
                                           (p.VAR_POSITIONAL, p.VAR_KEYWORD)) or p.name in IMAGE_INPUTS]
    if required:
        raise SpecError(f"{type(pipe).__name__} needs {', '.join(required)} besides a prompt; the lab runs "
                        f"text-to-image pipelines")


@contextlib.contextmanager
def swapped_denoiser(pipe, denoiser):
    """The pipeline with `denoiser` in its transformer/unet slot for the duration (the loaded one after)."""
    slot = next(c for c in DENOISER_COMPONENTS if getattr(pipe, c, None) is not None)
    original = getattr(pipe, slot)
    if original is denoiser:
        yield
        return
    setattr(pipe, slot, denoiser)
    handles = _cast_at_boundary(denoiser, next(original.parameters()).dtype)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        setattr(pipe, slot, original)


def _cast_at_boundary(denoiser, outer) -> list:
    """Hooks that run a denoiser of another dtype (a bf16 weights variant) inside a pipeline: its inputs are
    cast in and its outputs back, so the pipeline's own state keeps its dtype, as the lab's sampler does.
    Timesteps (1-D) stay as given: bf16 cannot hold 999."""
    # lazy: torch loads only to run; validation and pages read this module
    import torch

    inner = next(denoiser.parameters()).dtype
    if inner == outer:
        return []

    def cast(value, dtype):
        is_state = torch.is_tensor(value) and value.is_floating_point() and value.dim() >= 2
        return value.to(dtype) if is_state else value

    def cast_in(_module, args, kwargs):
        return tuple(cast(a, inner) for a in args), {k: cast(v, inner) for k, v in kwargs.items()}

    def cast_out(_module, _args, _kwargs, out):
        if isinstance(out, tuple):
            return tuple(cast(o, outer) for o in out)
        out.sample = cast(out.sample, outer)
        return out

    return [denoiser.register_forward_pre_hook(cast_in, with_kwargs=True),
            denoiser.register_forward_hook(cast_out, with_kwargs=True)]


def _call_kwargs(pipe, call, prompts: list[str], seed: int, size: int, step_end) -> dict:
    # lazy: torch loads only to run; validation and pages read this module
    import torch

    params = inspect.signature(pipe.__call__).parameters
    kwargs = dict(prompt=prompts, num_inference_steps=call.steps, guidance_scale=call.guidance, output_type="pt",
                  generator=torch.Generator().manual_seed(seed))
    if "callback_on_step_end" in params:
        kwargs["callback_on_step_end"] = lambda _pipe, i, _t, _tensors: step_end(i) or {}
    elif "callback" in params:  # the older API (PixArt): callback(step, timestep, latents) every callback_steps
        kwargs.update(callback=lambda i, _t, _latents: step_end(i), callback_steps=1)
    else:
        raise SpecError(f"{type(pipe).__name__} reports no step ends (callback_on_step_end or callback); the lab "
                        f"needs them to follow the steps")
    if size:
        kwargs.update(height=size, width=size)
    if "use_resolution_binning" in params:  # PixArt would otherwise resize to its nearest trained aspect
        kwargs["use_resolution_binning"] = False
    return kwargs


def generate(pipe, call, prompts: list[str], seed: int, size: int = 0, on_step=None):
    """One batch of images from the pipeline, as a SampleResult with images (B, 3, H, W) in [-1, 1]."""
    # lazy: these load torch, only to run; validation and pages read this module
    import torch

    from lab.diffusion.sampler import SampleResult

    model = call.model
    call.step_index = 0

    def read_timestep(_module, _args):
        # the scheduler's own units (0-1000 for DDPM-style and flow-matching schedulers alike); Flux passes
        # the denoiser t / 1000, so the argument itself would not do
        timesteps = pipe.scheduler.timesteps
        call.timestep = float(timesteps[min(call.step_index, len(timesteps) - 1)])

    def step_end(i: int) -> None:
        call.step_index = i + 1
        if on_step is not None:
            on_step(i)

    kwargs = _call_kwargs(pipe, call, prompts, seed, size, step_end)
    model._reset_stateful_cache()
    handle = model.register_forward_pre_hook(read_timestep)
    device = next(model.parameters()).device
    try:
        started = time.perf_counter()
        # pipelines that set no cache context of their own (PixArt, SD) run inside this one
        with model.cache_context("pipeline"), torch.no_grad():
            images = getattr(pipe(**kwargs), "images", None)
        if images is None:
            raise SpecError(f"{type(pipe).__name__} returned no images (a video pipeline?); the lab runs "
                            f"text-to-image pipelines")
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    finally:
        handle.remove()
    images = images.float().cpu() * 2 - 1  # [0, 1] -> [-1, 1], the data range PSNR and SSIM assume
    return SampleResult(images=images, seconds=seconds, steps_run=call.step_index)


def guidance_in_batch(pipe, guidance: float) -> bool:
    """Whether the pipeline batches classifier-free guidance [uncond; cond] into one denoiser call (SD, PixArt:
    they have do_classifier_free_guidance) or not (Flux embeds its guidance scale)."""
    return hasattr(type(pipe), "do_classifier_free_guidance") and guidance > 1.0


def thumbnail_png(image) -> str:
    """An image (3, H, W) in [-1, 1] as a base64 PNG, its long side at most THUMBNAIL (what the store keeps;
    PSNR and SSIM are computed on the full image before this)."""
    # lazy: these load torch, only to run; validation and pages read this module
    import torch
    from PIL import Image

    side = max(image.shape[-2:])
    if side > THUMBNAIL:
        image = torch.nn.functional.interpolate(image[None], scale_factor=THUMBNAIL / side, mode="area")[0]
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
