"""Stable Diffusion 3 / 3.5 pipelines: an MM-DiT predicting velocity on [B, C, h, w] latents, CFG.

Prompts are encoded by the pipeline's own ``encode_prompt`` (two CLIP encoders, and T5 when the
pipeline has one). Without a T5 encoder no T5 tokens are added (``max_sequence_length = 0``), as the
bundled ``pxpo-tiny-flow`` was trained; with T5, 256 tokens as diffusers does.
"""

from __future__ import annotations

from pxpo.families import guided_call, register_family
from pxpo.families.flow import FlowMatchingFamily
from pxpo.sampling import Conditioning

T5_TOKENS = 256


@register_family("StableDiffusion3Pipeline")
class StableDiffusion3Family(FlowMatchingFamily):
    """SD3Transformer2DModel + FlowMatchEulerDiscreteScheduler; CFG with the empty prompt."""

    name = "sd3"

    def default_size(self) -> tuple[int, int]:
        size = self.pipe.transformer.config.sample_size * self.pipe.vae_scale_factor
        return size, size

    @property
    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * self.pipe.transformer.config.patch_size

    @property
    def latent_channels(self) -> int:
        return self.pipe.transformer.config.in_channels

    @property
    def max_sequence_length(self) -> int:
        return T5_TOKENS if self.pipe.text_encoder_3 is not None else 0

    def encode_prompts(self, prompts: list[str], guidance_scale: float) -> Conditioning:
        cfg = guidance_scale > 1
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompts, None, None, device=self.device, do_classifier_free_guidance=cfg, max_sequence_length=self.max_sequence_length
        )
        tensors = {"embeds": embeds, "pooled": pooled}
        if cfg:
            tensors.update(negative_embeds=negative, negative_pooled=negative_pooled)
        return Conditioning(tensors)

    def predict(self, denoiser, latents, timesteps, conditioning, guidance_scale):
        embeds, negative = conditioning.get("embeds"), conditioning.get("negative_embeds")
        inputs = {
            "hidden_states": latents.to(embeds.dtype),
            "timestep": timesteps.reshape(-1).expand(latents.shape[0]),
            "encoder_hidden_states": embeds,
            "pooled_projections": conditioning.get("pooled"),
        }
        negatives = None if negative is None else {"encoder_hidden_states": negative, "pooled_projections": conditioning.get("negative_pooled")}
        return guided_call(lambda **kwargs: denoiser(**kwargs, return_dict=False)[0], inputs, negatives, guidance_scale)
