"""The shipped diffusion models (data/models/digits-*), loaded in fp32 with the digit classifier beside them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.diffusion.loaded import LoadedDenoiser
from lab.diffusion.pipelines import load_pipeline, pipeline_info
from lab.errors import SpecError
from lab.paths import SHIPPED_DATA

MODELS_DIR = SHIPPED_DATA / "models"


@dataclass(frozen=True)
class ShippedDenoiser:
    name: str
    architecture: str  # "dit" or "unet"
    folder: str
    description: str


DIFFUSION_MODELS = {
    "digits-dit": ShippedDenoiser("digits-dit", "dit", "digits-dit",
                                  "Class-conditional diffusion transformer (diffusers DiT, 6 blocks, width 128, "
                                  "patch 4, 2.1M parameters) trained by the lab on sklearn's digits at 16x16."),
    "digits-unet": ShippedDenoiser("digits-unet", "unet", "digits-unet",
                                   "Class-conditional UNet2DModel (32/64/96 channels, 1.8M parameters) trained by "
                                   "the lab on sklearn's digits at 16x16; the model for DeepCache."),
}
DEFAULT_DIFFUSION = "digits-dit"
CLASSIFIER_FOLDER = "digits-classifier"


def check_denoiser(name: str) -> str:
    """The architecture of a shipped diffusion model or a pipeline folder, or SpecError when it cannot load."""
    if name not in DIFFUSION_MODELS:
        return pipeline_info(name).architecture
    shipped = DIFFUSION_MODELS[name]
    if not (MODELS_DIR / shipped.folder / "config.json").exists():
        raise SpecError(f"diffusion model '{name}' has no weights in {MODELS_DIR / shipped.folder}; they ship with "
                        f"the lab (retrain: python -m lab.diffusion.train {shipped.architecture})")
    return shipped.architecture


def load_denoiser(name: str, device: str) -> LoadedDenoiser:
    if name not in DIFFUSION_MODELS:
        return load_pipeline(name, device)
    # lazy: these load torch, only to run; validation and pages read this module
    import torch
    from diffusers import UNet2DModel

    from lab.diffusion.nets import CachedDiT

    architecture = check_denoiser(name)
    folder = MODELS_DIR / DIFFUSION_MODELS[name].folder
    cls = CachedDiT if architecture == "dit" else UNet2DModel
    # stored in fp16 to keep the repository small; computed in fp32
    model = cls.from_pretrained(folder, torch_dtype=torch.float32).to(device).eval().requires_grad_(False)
    return LoadedDenoiser(name=name, kind="diffusion", model=model, classifier=load_classifier(device),
                          architecture=architecture, device=device, dtype="float32", source=str(folder))


def load_classifier(device: str = "cpu"):
    # lazy: these load torch, only to run; validation and pages read this module
    import torch
    from safetensors.torch import load_file

    from lab.diffusion.nets import DigitClassifier

    path = Path(MODELS_DIR / CLASSIFIER_FOLDER / "classifier.safetensors")
    if not path.exists():
        raise SpecError(f"the digit classifier is missing ({path}); retrain: python -m lab.diffusion.train classifier")
    classifier = DigitClassifier()
    classifier.load_state_dict({k: v.to(torch.float32) for k, v in load_file(str(path)).items()})
    return classifier.to(device).eval().requires_grad_(False)
