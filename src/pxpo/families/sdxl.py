"""Stable Diffusion XL pipelines: a UNet predicting noise with SDXL's added conditioning, sampled by DDIM with eta > 0.

What SDXL adds to Stable Diffusion v1 (``StableDiffusionFamily``, whose scheduler, DDIM step and LoRA it keeps):

- two CLIP text encoders: the pipeline's own ``encode_prompt`` concatenates their penultimate hidden states
  and takes the pooled projection of the second; the unconditional branch is the empty prompt, or zeros
  where the pipeline has ``force_zeros_for_empty_prompt`` (SDXL base does), exactly as the pipeline does;
- "micro-conditioning": the UNet also takes ``time_ids`` = (original size, crop top-left, target size),
  which the pipeline sets to (H, W, 0, 0, H, W) for an H x W image; ``predict`` builds them from the
  latents' size with the pipeline's own ``_get_add_time_ids`` (the same ids on both CFG halves);
- SDXL's VAE: latents are unscaled with ``latents_mean`` / ``latents_std`` when the VAE config has them,
  and a float16 VAE with ``force_upcast`` decodes in float32, as the pipeline decodes.

SDXL ships an EulerDiscreteScheduler; pxpo samples with DDIM built from its config (the same noise schedule,
'leading' spacing, steps offset), as for SD v1. The invisible watermark the pipeline may apply to its
output images is not applied to the images pxpo rewards.
"""

from __future__ import annotations

import torch

from pxpo.diffusers_private import sdxl_add_time_ids
from pxpo.families import guided_call, register_family
from pxpo.families.sd import StableDiffusionFamily
from pxpo.sampling import Conditioning


@register_family("StableDiffusionXLPipeline")
class StableDiffusionXLFamily(StableDiffusionFamily):
    """UNet2DConditionModel (text_time conditioning) + DDIM; CFG with the empty (or zeroed) prompt."""

    name = "sdxl"

    def encode_prompts(self, prompts: list[str], guidance_scale: float) -> Conditioning:
        """Embeds [B, L, D1 + D2] and the second encoder's pooled projection [B, P] (and the unconditional ones)."""
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(self.pipe, name, None) is None:
                raise ValueError(f"{type(self.pipe).__name__}.{name} is None: SDXL's UNet needs both CLIP text encoders")
        cfg = guidance_scale > 1
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompts, device=self.device, do_classifier_free_guidance=cfg
        )
        tensors = {"embeds": embeds, "pooled": pooled}
        if cfg:
            tensors.update(negative_embeds=negative, negative_pooled=negative_pooled)
        return Conditioning(tensors)

    def time_ids(self, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The pipeline's default micro-conditioning [B, 6] for latents [B, C, h, w]: (H, W, 0, 0, H, W) in pixels."""
        b, _, h, w = latents.shape
        size = (h * self.pipe.vae_scale_factor, w * self.pipe.vae_scale_factor)
        projection_dim = self.pipe.text_encoder_2.config.projection_dim
        return sdxl_add_time_ids(self.pipe, size, (0, 0), size, dtype, projection_dim).to(latents.device).repeat(b, 1)

    def predict(self, denoiser, latents, timesteps, conditioning, guidance_scale):
        embeds, negative = conditioning.get("embeds"), conditioning.get("negative_embeds")
        inputs = {
            "sample": latents.to(embeds.dtype),
            "timestep": timesteps.reshape(-1).expand(latents.shape[0]),
            "encoder_hidden_states": embeds,
            "text_embeds": conditioning.get("pooled"),
            "time_ids": self.time_ids(latents, embeds.dtype),
        }
        negatives = None
        if negative is not None:
            negatives = {"encoder_hidden_states": negative, "text_embeds": conditioning.get("negative_pooled")}

        def call(text_embeds: torch.Tensor, time_ids: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
            return denoiser(**kwargs, added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample

        return guided_call(call, inputs, negatives, guidance_scale)

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents [B, C, h, w] -> VAE latents: latents * std / scaling_factor + mean (or / scaling_factor)."""
        config = self.pipe.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:
            return latents / config.scaling_factor
        mean, std = (torch.tensor(v, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1) for v in (mean, std))
        return latents * std / config.scaling_factor + mean

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast  # SDXL's VAE overflows in float16
        if upcast:
            vae.to(torch.float32)
        try:
            images = vae.decode(self.unscale(latents).to(vae.dtype)).sample
        finally:
            if upcast:
                vae.to(torch.float16)
        return (images.float() / 2 + 0.5).clamp(0, 1)
