"""The three shipped networks: a class-conditional DiT, a class-conditional UNet, and a digit classifier.

Class conditioning in both denoisers has a "null" label (index NUM_CLASSES) for classifier-free guidance.
"""
from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel, UNet2DModel
from diffusers.models.cache_utils import CacheMixin

from lab.diffusion.data import IMAGE_SIZE, NUM_CLASSES

NULL_CLASS = NUM_CLASSES


class CachedDiT(DiTTransformer2DModel, CacheMixin):
    """diffusers' DiT is not a CacheMixin in 0.42; the mixin is all enable_cache/cache_context need."""


def build_dit() -> CachedDiT:
    # 6 blocks, width 4 x 32 = 128, 16 tokens (16x16 image, patch 4): ~2.1M parameters.
    model = CachedDiT(num_attention_heads=4, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=6,
                      sample_size=IMAGE_SIZE, patch_size=4, num_embeds_ada_norm=NUM_CLASSES, norm_num_groups=1)
    # Each DiT block drops labels on its own in train mode (different blocks drop different samples), which
    # never trains a clean unconditional path. Training drops whole samples' labels itself instead.
    for block in model.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    return model


def build_unet() -> UNet2DModel:
    # Three resolutions (16, 8, 4); DeepCache reuses everything below the first down/last up block.
    return UNet2DModel(sample_size=IMAGE_SIZE, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64, 96), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                       num_class_embeds=NUM_CLASSES + 1)


class DigitClassifier(torch.nn.Module):
    """A small CNN scoring 16x16 digits in [-1, 1]; trained on the real digits only."""

    def __init__(self):
        super().__init__()
        c = torch.nn
        self.features = c.Sequential(
            c.Conv2d(1, 32, 3, padding=1), c.ReLU(),
            c.Conv2d(32, 64, 3, padding=1, stride=2), c.ReLU(),   # 8x8
            c.Conv2d(64, 64, 3, padding=1, stride=2), c.ReLU(),   # 4x4
        )
        self.head = c.Sequential(c.Flatten(), c.Dropout(0.2), c.Linear(64 * 16, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
