"""Qwen-Image pipelines: an MM-DiT (QwenImageTransformer2DModel) on 2 x 2-packed latent tokens, a Qwen2.5-VL text
encoder, true classifier-free guidance with a negative prompt.

As for FLUX.1, the transformer sees packed tokens [B, (h/2)(w/2), 4C] and pxpo keeps latents, log-probabilities and
advantages on the unpacked grid [B, C, h, w] (the VAE's one frame: AutoencoderKLQwenImage works on [B, C, 1, h, w]);
the sigmas (linspace(1, 1/T, T)) and the dynamic shift (from the packed token count) are FLUX's, so the family
subclasses ``FluxFamily`` for them. What differs:

- prompts: the pipeline's own ``encode_prompt`` (its chat template, the system prompt's hidden states dropped), giving
  embeds [B, L, D] with a padding mask [B, L]; pxpo pads both to ``TEXT_TOKENS`` (the pipeline's default
  ``max_sequence_length``, also where it truncates) so that batches concatenate, and each transformer call trims them
  to the batch's longest prompt again, passing no mask when nothing is padded, as the pipeline does;
- guidance: Qwen-Image is not guidance-distilled; pxpo's ``guidance_scale`` is the pipeline's ``true_cfg_scale``
  with ``NEGATIVE_PROMPT`` (" ", as Qwen-Image's examples and Flow-GRPO's Qwen-Image recipe use), and the guided
  velocity is rescaled per token to the conditional velocity's norm, as the pipeline does. ``guidance_scale`` <= 1:
  no guidance, one transformer call;
- decoding: latents * latents_std + latents_mean (the VAE's per-channel statistics) on a one-frame video.

Shapes: B batch, L text tokens, D text width, C latent channels, h x w latent grid, H x W pixels.
"""

from __future__ import annotations

import torch

from pxpo.diffusers_private import qwen_image_pack_latents as pack
from pxpo.diffusers_private import qwen_image_unpack_latents as unpack
from pxpo.families import guided_call, register_family
from pxpo.families.flux import FluxFamily
from pxpo.sampling import Conditioning

TEXT_TOKENS = 512  # QwenImagePipeline.__call__'s default max_sequence_length
NEGATIVE_PROMPT = " "


def _padded(embeds: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's embeds [B, L, D] and mask [B, L] (None: nothing padded) -> both zero-padded to TEXT_TOKENS."""
    b, length, _ = embeds.shape
    if mask is None:
        mask = torch.ones(b, length, dtype=torch.long, device=embeds.device)
    pad = TEXT_TOKENS - length
    return torch.nn.functional.pad(embeds, (0, 0, 0, pad)), torch.nn.functional.pad(mask.long(), (0, pad))


def _trimmed(embeds: torch.Tensor, mask: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
    """Embeds [B, TEXT_TOKENS, D] and mask [B, TEXT_TOKENS] cut to their first ``length`` tokens, as transformer inputs."""
    return {"encoder_hidden_states": embeds[:, :length], "encoder_hidden_states_mask": mask[:, :length]}


def rescale_to_cond_norm(guided: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """QwenImagePipeline's true-CFG rescaling: each guided token [B, N, 4C] scaled to the norm of its conditional one."""
    return guided * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(guided, dim=-1, keepdim=True))


@register_family("QwenImagePipeline")
class QwenImageFamily(FluxFamily):
    """QwenImageTransformer2DModel + FlowMatchEulerDiscreteScheduler with FLUX's sigmas and Qwen-Image's dynamic shift."""

    name = "qwen-image"

    @property
    def lora_targets(self) -> tuple[str, ...]:  # type: ignore[override]
        """The flow families' attention projections, except the last block's ``to_add_out``: it only feeds the text
        stream, which the transformer drops after its last block (a LoRA there would never get a gradient)."""
        last = len(self.denoiser.transformer_blocks) - 1
        shared = tuple(name for name in super().lora_targets if name != "to_add_out")
        return (*shared, *(f"transformer_blocks.{i}.attn.to_add_out" for i in range(last)))

    def encode_prompts(self, prompts: list[str], guidance_scale: float) -> Conditioning:
        """Embeds [B, TEXT_TOKENS, D] and mask [B, TEXT_TOKENS] (and the negative prompt's when guidance_scale > 1)."""
        for name in ("text_encoder", "tokenizer"):
            if getattr(self.pipe, name, None) is None:
                raise ValueError(f"{type(self.pipe).__name__}.{name} is None: Qwen-Image encodes prompts with its Qwen2.5-VL")
        prompt_sets = {"": prompts, "negative_": [NEGATIVE_PROMPT] * len(prompts)} if guidance_scale > 1 else {"": prompts}
        tensors = {}
        for prefix, texts in prompt_sets.items():
            embeds, mask = self.pipe.encode_prompt(texts, device=self.device, max_sequence_length=TEXT_TOKENS)
            tensors[prefix + "embeds"], tensors[prefix + "mask"] = _padded(embeds, mask)
        return Conditioning(tensors)

    def predict(self, denoiser, latents, timesteps, conditioning, guidance_scale):
        """Latents [B, C, h, w] packed to tokens [B, (h/2)(w/2), 4C]; the (guided, rescaled) velocity unpacked to [B, C, h, w]."""
        embeds, mask = conditioning.get("embeds"), conditioning.get("mask")
        negative, negative_mask = conditioning.get("negative_embeds"), conditioning.get("negative_mask")
        guided = negative is not None and guidance_scale > 1
        masks = torch.cat([mask, negative_mask]) if guided else mask
        length = int(masks.any(dim=0).nonzero().max()) + 1  # the longest prompt of the batch (masks are a prefix of ones)
        b, _, h, w = latents.shape
        dtype = embeds.dtype
        inputs = {
            "hidden_states": pack(latents).to(dtype),
            "timestep": timesteps.reshape(-1).expand(b).to(dtype) / 1000,
            **_trimmed(embeds, mask, length),
        }

        def call(encoder_hidden_states_mask: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
            """The transformer on a batch [n, ...] (no mask when nothing is padded, as the pipeline passes it)."""
            img_shapes = [[(1, h // 2, w // 2)]] * len(kwargs["hidden_states"])
            mask_ = None if bool(encoder_hidden_states_mask.all()) else encoder_hidden_states_mask
            return denoiser(**kwargs, encoder_hidden_states_mask=mask_, img_shapes=img_shapes, return_dict=False)[0]

        negatives = _trimmed(negative, negative_mask, length) if guided else None
        return unpack(guided_call(call, inputs, negatives, guidance_scale, rescale=rescale_to_cond_norm), h, w)

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents [B, C, h, w] -> VAE latents [B, C, 1, h, w]: latents / (1 / latents_std) + latents_mean,
        as QwenImagePipeline computes it."""
        config = self.pipe.vae.config
        mean = torch.tensor(config.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
        inverse_std = 1.0 / torch.tensor(config.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
        return latents.unsqueeze(2) / inverse_std + mean

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents [B, C, h, w] -> images [B, 3, H, W] in [0, 1] (the decoded video's one frame)."""
        return super().decode(latents)[:, :, 0]
