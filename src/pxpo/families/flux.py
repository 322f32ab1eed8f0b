"""FLUX.1 pipelines: a rectified-flow transformer on 2 x 2-packed latent tokens, with a guidance embedding.

The transformer sees packed tokens [B, (h/2)(w/2), 4C]; pxpo keeps latents, log-probabilities and
advantages on the unpacked grid [B, C, h, w] (packing is a permutation, and the policy step acts
element by element, so the log-probability of each element is the same either way). ``predict``
packs the latents, calls the transformer and unpacks its velocity. FLUX.1-dev is guidance-distilled:
``guidance_scale`` goes to the guidance embedding, with no classifier-free guidance pass.
"""

from __future__ import annotations

import numpy as np
import torch

from pxpo.diffusers_private import pack_latents as pack
from pxpo.diffusers_private import prepare_latent_image_ids
from pxpo.diffusers_private import unpack_latents as unpack
from pxpo.families import register_family
from pxpo.families.flow import FlowMatchingFamily
from pxpo.sampling import Conditioning

T5_TOKENS = 512


@register_family("FluxPipeline")
class FluxFamily(FlowMatchingFamily):
    """FluxTransformer2DModel + FlowMatchEulerDiscreteScheduler with FLUX's sigmas and dynamic shift."""

    name = "flux"

    def default_size(self) -> tuple[int, int]:
        size = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return size, size

    @property
    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * 2

    @property
    def latent_channels(self) -> int:
        return self.pipe.transformer.config.in_channels // 4

    def image_seq_len(self, latent_shape: tuple[int, int, int]) -> int:
        _, h, w = latent_shape
        return (h // 2) * (w // 2)

    def custom_sigmas(self, num_steps: int) -> np.ndarray:
        return np.linspace(1.0, 1 / num_steps, num_steps)

    def encode_prompts(self, prompts: list[str], guidance_scale: float) -> Conditioning:
        tokens = min(T5_TOKENS, self.pipe.tokenizer_2.model_max_length)
        embeds, pooled, _ = self.pipe.encode_prompt(prompts, None, device=self.device, max_sequence_length=tokens)
        return Conditioning({"embeds": embeds, "pooled": pooled})

    def predict(self, denoiser, latents, timesteps, conditioning, guidance_scale):
        embeds, pooled = conditioning.get("embeds"), conditioning.get("pooled")
        b, _, h, w = latents.shape
        dtype = embeds.dtype
        config = getattr(denoiser, "module", denoiser).config
        guidance = torch.full((b,), float(guidance_scale), device=latents.device) if config.guidance_embeds else None
        image_ids = prepare_latent_image_ids(h, w, latents.device, dtype)
        text_ids = torch.zeros(embeds.shape[1], 3, device=latents.device, dtype=dtype)
        tokens = denoiser(
            hidden_states=pack(latents).to(dtype),
            timestep=timesteps.reshape(-1).expand(b).to(dtype) / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        return unpack(tokens, h, w)
