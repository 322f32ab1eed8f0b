"""Rollouts: a model family's denoiser run through a policy step, every step's per-element log-probability kept.

``sample_trajectories`` samples with the current policy; ``recompute_log_prob`` scores recorded steps with
the policy being trained (with gradients). Both run the same loop for every family (``pxpo.families``):
latents live on the family's latent grid [B, C, h, w] (FLUX's packed tokens are unpacked by its family),
where heatmaps meet them. This module sits above the families and the step maths (``pxpo.sampling``).

Shapes: B batch, T denoising steps, C latent channels, h x w latent grid, H x W pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline

from pxpo.families import ModelFamily, as_family
from pxpo.progress import bar
from pxpo.sampling import Generator, StepOutput, Trajectories


@torch.no_grad()
def sample_trajectories(
    model: DiffusionPipeline | ModelFamily,
    prompts: Sequence[str],
    *,
    num_steps: int,
    guidance_scale: float,
    noise_level: float,
    generator: Generator = None,
    height: int | None = None,
    width: int | None = None,
    initial_noise: torch.Tensor | None = None,
    metadata: Sequence[dict] | None = None,
    adapter_steps: tuple[int, int] | None = None,
    progress: bool = False,
    desc: str = "sampling",
) -> Trajectories:
    """Sample one trajectory per prompt with the model's denoiser as the policy.

    The same generator(s) give the same trajectories: pass one generator per sample (a list) to make
    each sample depend on its own seed only. For Stable Diffusion with equal eta and seeds, the images
    equal those of ``pipe(prompts, eta=eta, generator=...)``.

    Args:
        model: a supported diffusers pipeline (StableDiffusionPipeline, StableDiffusion3Pipeline,
            FluxPipeline) or a ``pxpo.families.ModelFamily`` wrapping one.
        prompts: B prompts.
        num_steps: T, the number of denoising steps.
        guidance_scale: classifier-free guidance weight (> 1 turns it on); FLUX's guidance embedding.
        noise_level: the policy's noise: DDIM's eta (SD) or the SDE's noise level (flow families); > 0.
        generator: torch generator, or a list of B generators.
        height, width: image size in pixels (both or neither); defaults to the model's native size.
        initial_noise: the initial latents [B, C, h, w]; drawn from ``generator`` when None (the
            generator then also draws the steps' noise).
        progress: show a progress bar over the steps (on a terminal), labelled ``desc``.

    Returns:
        Trajectories with latents [B, T + 1, C, h, w], log_probs [B, T, C, h, w], images [B, 3, H, W].
    """
    family = as_family(model)
    latent_shape = family.latent_shape(height, width)
    conditioning = family.encode_prompts(list(prompts), guidance_scale)
    timesteps = family.set_timesteps(num_steps, latent_shape)
    latents = initial_noise.float() if initial_noise is not None else family.initial_noise(len(prompts), latent_shape, generator)
    all_latents, all_log_probs = [latents], []
    for j, t in enumerate(bar(timesteps, desc=desc, enabled=progress)):
        outside = adapter_steps is not None and not adapter_steps[0] <= j < adapter_steps[1]
        with adapters_off(family.denoiser) if outside else contextlib.nullcontext():
            model_output = family.predict(family.denoiser, latents, t.expand(len(prompts)), conditioning, guidance_scale)
        step = family.step(model_output, t, latents, noise_level, generator=generator)
        latents = step.prev_sample
        all_latents.append(latents)
        all_log_probs.append(step.log_prob)
    return Trajectories(
        prompts=list(prompts),
        conditioning=conditioning,
        timesteps=timesteps.clone(),
        latents=torch.stack(all_latents, dim=1),
        log_probs=torch.stack(all_log_probs, dim=1),
        images=family.decode(latents),
        metadata=[dict(m) for m in metadata] if metadata is not None else [{} for _ in prompts],
    )


def recompute_log_prob(
    model: DiffusionPipeline | ModelFamily,
    denoiser: torch.nn.Module,
    trajectories: Trajectories,
    sample_index: torch.Tensor,
    step_index: torch.Tensor,
    *,
    guidance_scale: float,
    noise_level: float,
) -> StepOutput:
    """The current policy's log-probability of recorded steps, exactly as they were sampled.

    The scheduler is set to the trajectories' steps first, so nothing depends on what ran on it before.

    Args:
        model: the pipeline or ``ModelFamily`` that sampled.
        denoiser: the policy's UNet or transformer (possibly wrapped for distributed training).
        trajectories: the sampled batch.
        sample_index: [b] which samples.
        step_index: [b] which step j of each sample (the transition latents[j] -> latents[j + 1]).
        guidance_scale, noise_level: as used while sampling.

    Returns:
        StepOutput whose log_prob [b, C, h, w] carries gradients into the denoiser.
    """
    family = as_family(model)
    timesteps = family.set_timesteps(len(trajectories.timesteps), tuple(trajectories.latents.shape[2:]))
    if not torch.equal(timesteps.to(trajectories.timesteps.device), trajectories.timesteps):
        raise ValueError("these trajectories were sampled with other timesteps than the scheduler's: score them with the model that sampled them")
    latents = trajectories.latents[sample_index, step_index]
    timesteps = trajectories.timesteps[step_index]
    model_output = family.predict(denoiser, latents, timesteps, trajectories.conditioning[sample_index], guidance_scale)
    return family.step(
        model_output, timesteps, latents, noise_level, prev_sample=trajectories.latents[sample_index, step_index + 1]
    )


@dataclass
class Policy:
    """The policy being trained: a family's denoiser with the sampler's settings, scoring recorded steps.

    Attributes:
        family: the model family.
        denoiser: the trained network as it is called (possibly wrapped for distributed training).
        guidance_scale, noise_level: as used while sampling.
        autocast: a context manager factory around denoiser calls (accelerate's mixed precision).
        unwrapped: the same network unwrapped (it holds the LoRA adapters); default: ``denoiser``.
    """

    family: ModelFamily
    denoiser: torch.nn.Module
    guidance_scale: float
    noise_level: float
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext
    unwrapped: torch.nn.Module | None = None

    def log_prob(self, trajectories: Trajectories, rows: torch.Tensor, steps: torch.Tensor) -> StepOutput:
        """The current policy's step (sample ``rows[i]``, step ``steps[i]``) [b, C, h, w], with gradients."""
        with self.autocast():
            return recompute_log_prob(
                self.family, self.denoiser, trajectories, rows, steps, guidance_scale=self.guidance_scale, noise_level=self.noise_level
            )

    @torch.no_grad()
    def reference_log_prob(self, trajectories: Trajectories, rows: torch.Tensor, steps: torch.Tensor) -> StepOutput:
        """The reference policy's step: the same weights with the LoRA adapters switched off (no gradient)."""
        denoiser = self.unwrapped if self.unwrapped is not None else self.denoiser
        with adapters_off(denoiser), self.autocast():
            return recompute_log_prob(
                self.family, denoiser, trajectories, rows, steps, guidance_scale=self.guidance_scale, noise_level=self.noise_level
            )


@contextlib.contextmanager
def adapters_off(denoiser: torch.nn.Module):
    """The denoiser with its LoRA adapters switched off inside the block (the base model); on again after it."""
    denoiser.disable_adapters()
    try:
        yield denoiser
    finally:
        denoiser.enable_adapters()
