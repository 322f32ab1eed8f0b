"""A tiny Stable Diffusion XL pipeline, built from configs in code, offline (random weights).

SDXL's layout at toy size: a UNet with SDXL's "text_time" added conditioning (the second encoder's pooled
projection and six size/crop numbers), linear-projection transformer blocks, two CLIP text encoders whose
penultimate hidden states are concatenated (32 + 32 = the UNet's cross-attention width 64), SDXL's VAE
scaling factor, and the EulerDiscreteScheduler config SDXL ships (pxpo samples it with DDIM from that
config). A 64 x 64 image has a 4 x 16 x 16 latent, as the other tiny pipelines.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from pxpo.world.architecture import (
    _eval,
    build_tokenizer,
    clip_with_projection,
    scheduler_config,
    text_encoder_config,
    unet_config,
    vae_config,
)

TEXT_WIDTH = 32  # each CLIP encoder's hidden size (and the second one's projection)
TIME_EMBED_DIM = 8  # per size/crop number: 6 of them
SDXL_VAE_SCALING = 0.13025  # stabilityai/stable-diffusion-xl-base-1.0's vae/config.json


def sdxl_unet_config() -> dict:
    """UNet2DConditionModel as SDXL configures it, at the tiny UNet's size: 16 x 16 latents, channels (32, 64, 128)."""
    return dict(
        unet_config(),
        cross_attention_dim=2 * TEXT_WIDTH,
        transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_WIDTH,
    )


def sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL's shipped scheduler: Euler with 'leading' timestep spacing (its config keeps the DDIM settings)."""
    return EulerDiscreteScheduler.from_config({**scheduler_config(), "timestep_spacing": "leading"})


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A StableDiffusionXLPipeline at toy size with random weights drawn from ``seed`` (no watermarker)."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = build_tokenizer(), build_tokenizer()
    return _eval(StableDiffusionXLPipeline(
        vae=AutoencoderKL(**vae_config(), scaling_factor=SDXL_VAE_SCALING, force_upcast=True),
        text_encoder=CLIPTextModel(text_encoder_config(tokenizer)),
        text_encoder_2=clip_with_projection(tokenizer_2, hidden_size=TEXT_WIDTH),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=UNet2DConditionModel(**sdxl_unet_config()),
        scheduler=sdxl_scheduler(),
        add_watermarker=False,
    ))
