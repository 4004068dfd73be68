"""Tiny, randomly initialised diffusers pipelines built from configs, for tests of the pipeline path.

They stand in for Flux, PixArt, Stable Diffusion and SD3 checkpoints (which cannot be downloaded here): the same
classes, a few thousand parameters each, tokenizers built offline. Their images are noise-like and never shown
to a user as real; tests use them to check plumbing, counting and bit-exactness.
"""
from __future__ import annotations

from pathlib import Path

CLIP_DIM = 32


def clip_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):  # no merges: one token per byte
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz▁"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=64)


def clip_text_encoder(vocab_size: int, seed: int, projection: bool = False):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(hidden_size=CLIP_DIM, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, vocab_size=vocab_size, projection_dim=CLIP_DIM,
                                        max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                        pad_token_id=1)).eval()


def t5_encoder(vocab_size: int, seed: int, d_model: int = 32):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(d_model=d_model, d_ff=37, num_layers=2, num_heads=4, d_kv=8,
                                   vocab_size=vocab_size, relative_attention_num_buckets=8)).eval()


def build_flux(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=CLIP_DIM, axes_dims_rope=[4, 4, 8])
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    clip, t5 = clip_tokenizer(), t5_tokenizer()
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                        text_encoder=clip_text_encoder(len(clip), seed + 1), tokenizer=clip,
                        text_encoder_2=t5_encoder(len(t5), seed + 2), tokenizer_2=t5, transformer=transformer)


def build_pixart(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=3, caption_channels=32, in_channels=4,
                                           cross_attention_dim=24, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                        norm_num_groups=2, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    t5 = t5_tokenizer()
    return PixArtSigmaPipeline(scheduler=DPMSolverMultistepScheduler(), vae=vae, transformer=transformer,
                               text_encoder=t5_encoder(len(t5), seed + 1), tokenizer=t5)


def build_sd(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=CLIP_DIM,
                                norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                        norm_num_groups=2, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    clip = clip_tokenizer()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=clip_text_encoder(len(clip), seed + 1), tokenizer=clip,
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_sd3(seed: int = 0):
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=2 * CLIP_DIM, out_channels=4)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    clip, t5 = clip_tokenizer(), t5_tokenizer()
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
        text_encoder=clip_text_encoder(len(clip), seed + 1, projection=True), tokenizer=clip,
        text_encoder_2=clip_text_encoder(len(clip), seed + 2, projection=True), tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(len(t5), seed + 3), tokenizer_3=t5)


BUILDERS = {"flux": build_flux, "pixart": build_pixart, "sd": build_sd, "sd3": build_sd3}


def save_tiny_pipeline(kind: str, folder: Path) -> Path:
    BUILDERS[kind]().save_pretrained(folder)
    return folder
