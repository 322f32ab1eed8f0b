"""Stable Diffusion v1/v2-class pipelines: a UNet predicting noise, sampled by DDIM with eta > 0."""

from __future__ import annotations

import logging

import torch
from diffusers import DDIMScheduler

from pxpo.families import ModelFamily, guided_call, register_family
from pxpo.sampling import Conditioning, Generator, StepOutput, ddim_step_with_logprob

logger = logging.getLogger(__name__)


@register_family("StableDiffusionPipeline")
class StableDiffusionFamily(ModelFamily):
    """UNet2DConditionModel + DDIM. Classifier-free guidance with the empty prompt."""

    name = "sd"
    denoiser_name = "unet"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    lora_layers_argument = "unet_lora_layers"
    lora_key_format = "diffusers"

    def prepare_scheduler(self) -> None:
        """Rebuild the scheduler as a DDIMScheduler from its config (SD v1.4 ships PNDM).

        ``set_alpha_to_one`` is turned off when set: it makes the last DDIM step deterministic and its
        log-probability undefined.
        """
        config = dict(self.pipe.scheduler.config)
        if config.get("set_alpha_to_one", False):
            logger.info("set_alpha_to_one=True would make the last DDIM step deterministic; pxpo uses False")
            config["set_alpha_to_one"] = False
        if not isinstance(self.pipe.scheduler, DDIMScheduler) or self.pipe.scheduler.config.get("set_alpha_to_one", False):
            self.pipe.scheduler = DDIMScheduler.from_config(config)

    def default_size(self) -> tuple[int, int]:
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return size, size

    @property
    def latent_channels(self) -> int:
        return self.pipe.unet.config.in_channels

    def encode_prompts(self, prompts: list[str], guidance_scale: float) -> Conditioning:
        cond, uncond = self.pipe.encode_prompt(prompts, self.device, num_images_per_prompt=1, do_classifier_free_guidance=guidance_scale > 1)
        tensors = {"embeds": cond}
        if guidance_scale > 1:
            tensors["negative_embeds"] = uncond
        return Conditioning(tensors)

    def set_timesteps(self, num_steps: int, latent_shape: tuple[int, int, int]) -> torch.Tensor:
        self.pipe.scheduler.set_timesteps(num_steps, device=self.device)
        return self.pipe.scheduler.timesteps

    def predict(self, denoiser, latents, timesteps, conditioning, guidance_scale):
        embeds, negative = conditioning.get("embeds"), conditioning.get("negative_embeds")
        inputs = {"sample": latents.to(embeds.dtype), "timestep": timesteps.reshape(-1).expand(latents.shape[0]), "encoder_hidden_states": embeds}
        negatives = None if negative is None else {"encoder_hidden_states": negative}
        return guided_call(lambda **kwargs: denoiser(**kwargs).sample, inputs, negatives, guidance_scale)

    def policy_noise(self, eta: float, noise_level: float) -> float:
        return eta

    def step(self, model_output, timestep, sample, noise_level, prev_sample=None, generator: Generator = None) -> StepOutput:
        return ddim_step_with_logprob(self.pipe.scheduler, model_output, timestep, sample, noise_level, prev_sample, generator)

    def deterministic_step(self, model_output, timestep, sample):
        return self.pipe.scheduler.step(model_output, timestep, sample, eta=0.0).prev_sample.float()  # DDIM's step is stateless

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)
