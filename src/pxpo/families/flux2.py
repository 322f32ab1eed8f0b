"""FLUX.2 and FLUX.2 [klein] pipelines: a rectified-flow transformer on patchified, packed latent tokens.

FLUX.2's VAE (AutoencoderKLFlux2) makes C-channel latents at 1/8 of the image size; the pipeline patchifies
each 2 x 2 patch into the channels ([B, 4C, h/2, w/2]), normalises them with the VAE's batch-norm statistics,
and packs them into tokens [B, (h/2)(w/2), 4C] with 4-axis position ids. pxpo's grid is the VAE's
[B, C, h, w] (as FLUX.1's): a latent cell covers vae_scale_factor x vae_scale_factor pixels, and patchifying
and packing are permutations, so the policy step (element by element) has the same log-probabilities either
way and a heatmap's pixels reach only the cells under them. The model-space (normalised) latents live on
the grid; ``decode`` undoes the normalisation as the pipeline does.

The timestep shift is BFL's empirical mu of the token count and the number of steps. FLUX.2 [dev]
(Mistral3 text encoder) is guidance-distilled: ``guidance_scale`` goes to the guidance embedding. FLUX.2
[klein] (Qwen3 text encoder) has no guidance embedding: the base models use classifier-free guidance with
the empty prompt, the step-distilled ones (``is_distilled``) no guidance at all.
"""

from __future__ import annotations

import torch

from pxpo.diffusers_private import (
    flux2_empirical_mu,
    flux2_pack_latents,
    flux2_patchify_latents,
    flux2_prepare_text_ids,
    flux2_unpack_latents,
    flux2_unpatchify_latents,
)
from pxpo.families import guided_call, register_family
from pxpo.families.flow import FlowMatchingFamily
from pxpo.families.flux import FluxFamily
from pxpo.sampling import Conditioning, Generator

MAX_TOKENS = 512  # the pipelines' max_sequence_length


@register_family("Flux2Pipeline")
class Flux2Family(FluxFamily):
    """Flux2Transformer2DModel + FlowMatchEulerDiscreteScheduler with FLUX.2's sigmas and empirical shift.

    FLUX.1's geometry (``FluxFamily``: native size, 2 x 2 tokens, channels, token count, sigmas); its own prompts,
    noise layout, denoiser call, shift and decoding."""

    name = "flux2"
    # the double-stream blocks' attention projections, and the single-stream blocks' fused q, k, v (and MLP) input
    lora_targets = (*FlowMatchingFamily.lora_targets, "to_qkv_mlp_proj")

    def set_timesteps(self, num_steps: int, latent_shape: tuple[int, int, int]) -> torch.Tensor:
        """The pipeline's sigmas, shifted by its empirical mu (which the scheduler uses when it shifts dynamically)."""
        mu = flux2_empirical_mu(self.image_seq_len(latent_shape), num_steps)
        self.pipe.scheduler.set_timesteps(num_steps, device=self.device, sigmas=self.custom_sigmas(num_steps), mu=mu)
        return self.pipe.scheduler.timesteps

    def initial_noise(self, batch: int, latent_shape: tuple[int, int, int], generator: Generator) -> torch.Tensor:
        """The pipeline's noise, drawn patchified [B, 4C, h/2, w/2] from the same generator(s), on the grid [B, C, h, w]."""
        c, h, w = latent_shape
        return flux2_unpatchify_latents(super().initial_noise(batch, (4 * c, h // 2, w // 2), generator))

    # prompts -------------------------------------------------------------------------------------------------
    @property
    def max_sequence_length(self) -> int:
        """Text tokens per prompt: the pipeline's 512, or fewer where the tokenizer holds fewer."""
        tokenizer = getattr(self.pipe.tokenizer, "tokenizer", self.pipe.tokenizer)  # the hub's is a processor
        return min(MAX_TOKENS, tokenizer.model_max_length)

    def embed(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings [B, L, D] by the pipeline's own ``encode_prompt`` (its layers of the text encoder)."""
        if self.pipe.text_encoder is None:
            raise ValueError(f"{type(self.pipe).__name__} has no text_encoder: pxpo encodes prompts with the pipeline's own "
                             "text encoder (load the pipeline with it)")  # fmt: skip
        embeds, _ = self.pipe.encode_prompt(prompts, device=self.device, max_sequence_length=self.max_sequence_length)
        return embeds

    def encode_prompts(self, prompts: list[str], guidance_scale: float) -> Conditioning:
        return Conditioning({"embeds": self.embed(prompts)})

    # the denoiser -------------------------------------------------------------------------------------------
    def predict(self, denoiser, latents, timesteps, conditioning, guidance_scale):
        """Latents [B, C, h, w] packed into tokens, the transformer's velocity tokens unpacked onto the grid."""
        embeds, negative = conditioning.get("embeds"), conditioning.get("negative_embeds")
        b, dtype = latents.shape[0], embeds.dtype
        tokens, ids = flux2_pack_latents(latents)
        inputs = {
            "hidden_states": tokens.to(dtype),
            "timestep": timesteps.reshape(-1).expand(b).to(dtype) / 1000,
            "encoder_hidden_states": embeds,
            "txt_ids": flux2_prepare_text_ids(embeds),
            "img_ids": ids,
        }
        if getattr(denoiser, "module", denoiser).config.guidance_embeds:  # FLUX.2 [dev]: guidance-distilled
            inputs["guidance"] = torch.full((b,), float(guidance_scale), device=latents.device, dtype=torch.float32)
        negatives = None if negative is None else {"encoder_hidden_states": negative}
        velocity = guided_call(lambda **kwargs: denoiser(**kwargs, return_dict=False)[0], inputs, negatives, guidance_scale)
        return flux2_unpack_latents(velocity, ids)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, h, w] -> images [B, 3, H, W] in [0, 1]: the VAE's batch-norm statistics undone on
        the patchified latents, as the pipeline does before decoding."""
        vae = self.pipe.vae
        patched = flux2_patchify_latents(latents)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(patched)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(patched)
        images = vae.decode(flux2_unpatchify_latents(patched * std + mean).to(vae.dtype)).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)


@register_family("Flux2KleinPipeline")
class Flux2KleinFamily(Flux2Family):
    """FLUX.2 [klein]: the same transformer without a guidance embedding; CFG with the empty prompt unless the
    pipeline is step-distilled (``is_distilled``)."""

    name = "flux2-klein"

    def uses_cfg(self, guidance_scale: float) -> bool:
        """The pipeline's ``do_classifier_free_guidance``: a scale above 1 on a model that is not step-distilled."""
        return guidance_scale > 1 and not self.pipe.config.get("is_distilled", False)

    def encode_prompts(self, prompts: list[str], guidance_scale: float) -> Conditioning:
        tensors = {"embeds": self.embed(prompts)}
        if self.uses_cfg(guidance_scale):
            tensors["negative_embeds"] = self.embed([""] * len(prompts))
        return Conditioning(tensors)
