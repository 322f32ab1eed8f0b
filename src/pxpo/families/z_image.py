"""Z-Image pipelines (Z-Image, Z-Image-Turbo): a single-stream flow transformer on a list of per-sample latents.

The transformer takes a list of B latents [C, 1, h, w] (a frame axis of one), patchified 2 x 2 inside it, a list
of B caption features [L_b, D] (the Qwen3 text encoder's second-to-last hidden states at the prompt's real tokens,
through the pipeline's own ``encode_prompt`` and its chat template) and the timestep as 1 - t / 1000; the pipeline
negates its output to get the velocity the Euler scheduler steps with. pxpo keeps latents on the grid
[B, C, h, w]: ``predict`` splits them into that list and stacks and negates the output, as the pipeline does.

Caption features have one length per prompt; ``Conditioning`` keeps them padded to the tokenizer's padding length
(``embeds`` [B, N, D]) with their lengths (``lengths`` [B]), so that batches index and join, and ``predict`` cuts
them back to the pipeline's list.

Guidance: pxpo's ``guidance_scale`` w is the classifier-free guidance weight of every family (uncond + w (cond -
uncond), on when w > 1). ZImagePipeline writes it as cond + s (cond - uncond), on when s > 0: s = w - 1. So
Z-Image-Turbo (distilled, diffusers' guidance_scale 0) is w = 1, Z-Image's 4 is w = 5. pxpo samples as the
pipeline does by default: CFG at every step (``cfg_truncation`` 1.0) without renormalisation (``cfg_normalization``
False). Timesteps: the pipeline's sigmas (1 .. 1 / T) and ``mu`` (used when the scheduler has dynamic shifting;
both released checkpoints have a static shift, 3 for Turbo and 6 for Z-Image).
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from pxpo.diffusers_private import z_image_sigmas
from pxpo.families import guided_call, register_family
from pxpo.families.flow import FlowMatchingFamily
from pxpo.sampling import Conditioning

QWEN_TOKENS = 512  # ZImagePipeline's max_sequence_length
NATIVE_SIZE = 1024  # ZImagePipeline's default height and width (``height or 1024``): it has no default_sample_size
PATCH = 2  # the transformer's patch side, as the pipeline calls it (its forward's default patch_size)


def pad_captions(features: list[torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B caption features [L_b, D] -> (zero-padded features [B, length, D], their lengths [B])."""
    lengths = torch.tensor([len(f) for f in features], device=features[0].device)
    padded = pad_sequence(features, batch_first=True)
    return torch.nn.functional.pad(padded, (0, 0, 0, length - padded.shape[1])), lengths


@register_family("ZImagePipeline")
class ZImageFamily(FlowMatchingFamily):
    """ZImageTransformer2DModel + FlowMatchEulerDiscreteScheduler with Z-Image's sigmas; CFG with the empty prompt."""

    name = "z_image"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections of every (refiner and main) block

    def default_size(self) -> tuple[int, int]:
        return NATIVE_SIZE, NATIVE_SIZE

    @property
    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * PATCH

    @property
    def latent_channels(self) -> int:
        return self.pipe.transformer.config.in_channels

    def image_seq_len(self, latent_shape: tuple[int, int, int]) -> int:
        _, h, w = latent_shape
        return (h // PATCH) * (w // PATCH)

    def custom_sigmas(self, num_steps: int) -> list[float]:
        return z_image_sigmas(num_steps)

    @property
    def max_sequence_length(self) -> int:
        """Tokens each prompt is padded (and truncated) to: the pipeline's 512, or the tokenizer's own limit if shorter."""
        return min(QWEN_TOKENS, self.pipe.tokenizer.model_max_length)

    def encode_prompts(self, prompts: list[str], guidance_scale: float) -> Conditioning:
        missing = [name for name in ("text_encoder", "tokenizer") if getattr(self.pipe, name, None) is None]
        if missing:
            need = f"the {self.name} family encodes prompts with its Qwen3 text encoder"
            raise ValueError(f"{type(self.pipe).__name__} has no {missing[0]}: {need}")
        cfg, length = guidance_scale > 1, self.max_sequence_length
        # (encode_prompt writes the chat-templated prompts into the list it is given: a copy)
        positive, negative = self.pipe.encode_prompt(
            list(prompts), self.device, do_classifier_free_guidance=cfg, max_sequence_length=length
        )
        embeds, lengths = pad_captions(positive, length)
        tensors = {"embeds": embeds, "lengths": lengths}
        if cfg:
            tensors["negative_embeds"], tensors["negative_lengths"] = pad_captions(negative, length)
        return Conditioning(tensors)

    def predict(self, denoiser, latents, timesteps, conditioning, guidance_scale):
        embeds, negative = conditioning.get("embeds"), conditioning.get("negative_embeds")
        inputs = {
            "latents": latents.to(embeds.dtype),
            "timesteps": timesteps.reshape(-1).expand(latents.shape[0]),
            "embeds": embeds,
            "lengths": conditioning.get("lengths"),
        }
        negatives = None if negative is None else {"embeds": negative, "lengths": conditioning.get("negative_lengths")}
        return guided_call(lambda **kwargs: self.velocity(denoiser, **kwargs), inputs, negatives, guidance_scale)

    @staticmethod
    def velocity(
        denoiser: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, embeds: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """One unguided transformer call as ZImagePipeline makes it: latents [B, C, h, w] at scheduler timesteps [B],
        caption features [B, N, D] of lengths [B] -> the velocity [B, C, h, w] (float32) the scheduler steps with."""
        output = denoiser(
            x=list(latents.unsqueeze(2).unbind(dim=0)),  # B latents [C, 1, h, w]
            t=(1000 - timesteps) / 1000,
            cap_feats=[features[:n] for features, n in zip(embeds, lengths.tolist())],
            return_dict=False,
        )[0]
        return -torch.stack([sample.float() for sample in output]).squeeze(2)
