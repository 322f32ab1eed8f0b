"""What the flow-matching families (SD3, FLUX) share: the scheduler, the SDE policy step, VAE scaling."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pxpo.diffusers_private import calculate_shift
from pxpo.families import ModelFamily
from pxpo.sampling import Generator, StepOutput, cps_step_with_logprob, flow_ode_step, flow_step_with_logprob

POLICY_STEPS = {"sde": flow_step_with_logprob, "cps": cps_step_with_logprob}  # sample.sde_type -> the flow families' policy step


class FlowMatchingFamily(ModelFamily):
    """A velocity-predicting transformer sampled by Flow-GRPO's SDE (``flow_step_with_logprob``, sde_type "sde") or by
    coefficients-preserving sampling (``cps_step_with_logprob``, sde_type "cps")."""

    sde_types = tuple(POLICY_STEPS)

    denoiser_name = "transformer"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    lora_layers_argument = "transformer_lora_layers"

    def prepare_scheduler(self) -> None:
        scheduler = self.pipe.scheduler
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"{type(self.pipe).__name__} has a {type(scheduler).__name__}: pxpo samples {self.name} models with a "
                "FlowMatchEulerDiscreteScheduler"
            )
        for option in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling"):
            if scheduler.config.get(option, False):
                raise ValueError(f"the scheduler's {option}=True is not supported by pxpo's flow sampler")

    def image_seq_len(self, latent_shape: tuple[int, int, int]) -> int:
        """Image tokens the transformer sees (for the resolution-dependent timestep shift)."""
        _, h, w = latent_shape
        patch = self.pipe.transformer.config.patch_size
        return (h // patch) * (w // patch)

    def custom_sigmas(self, num_steps: int) -> np.ndarray | None:
        """Sigmas the pipeline passes to ``set_timesteps`` (FLUX), or None for the scheduler's own."""
        return None

    def set_timesteps(self, num_steps: int, latent_shape: tuple[int, int, int]) -> torch.Tensor:
        scheduler = self.pipe.scheduler
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", False):
            c = scheduler.config
            kwargs["mu"] = calculate_shift(
                self.image_seq_len(latent_shape), c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                c.get("base_shift", 0.5), c.get("max_shift", 1.15),
            )  # fmt: skip
        sigmas = self.custom_sigmas(num_steps)
        if sigmas is not None:
            scheduler.set_timesteps(sigmas=sigmas, device=self.device, **kwargs)
        else:
            scheduler.set_timesteps(num_steps, device=self.device, **kwargs)
        return scheduler.timesteps

    def policy_noise(self, eta: float, noise_level: float) -> float:
        return noise_level

    def step(self, model_output, timestep, sample, noise_level, prev_sample=None, generator: Generator = None) -> StepOutput:
        return POLICY_STEPS[self.sde_type](self.pipe.scheduler, model_output, timestep, sample, noise_level, prev_sample, generator)

    def deterministic_step(self, model_output, timestep, sample):
        return flow_ode_step(self.pipe.scheduler, model_output, timestep, sample)

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents -> VAE latents: latents / scaling_factor + shift_factor."""
        config = self.pipe.vae.config
        return latents / config.scaling_factor + (config.shift_factor or 0.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        images = vae.decode(self.unscale(latents).to(vae.dtype)).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)
