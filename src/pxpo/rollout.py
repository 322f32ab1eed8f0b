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


def policy_output(
    family: ModelFamily,
    denoiser: torch.nn.Module,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    conditioning,
    guidance_scale: float,
    region: torch.Tensor | None = None,
) -> torch.Tensor:
    """The policy's (guided) model output [B, C, h, w]: ``family.predict``, or with a ``region`` [B or 1, 1, h, w] in [0, 1]
    (``train.regional_adapter``) the LoRA's change to it only there: base + region * (adapted - base), where the base
    output is the same denoiser's with its adapters off (``family.denoiser``'s), computed without gradient. Where the
    region is 0 the output is the base model's exactly; it is 1 everywhere: the adapted output alone."""
    if region is not None and (region.ndim != 4 or region.shape[1] != 1 or region.shape[2:] != latents.shape[2:] or len(region) not in (1, len(latents))):
        raise ValueError(f"a region of shape {tuple(region.shape)} for latents of shape {tuple(latents.shape)}: expected [B or 1, 1, h, w] on their grid")

    def base() -> torch.Tensor:
        with torch.no_grad(), adapters_off(family.denoiser):
            return family.predict(family.denoiser, latents, timesteps, conditioning, guidance_scale)

    if region is not None and not torch.is_grad_enabled() and not bool(region.any()):  # (with gradients: a zero one)
        return base()
    adapted = family.predict(denoiser, latents, timesteps, conditioning, guidance_scale)
    if region is None or bool((region == 1).all()):
        return adapted
    reference = base()
    return reference + region.to(adapted) * (adapted - reference)


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
    sde_window: tuple[torch.Tensor, int] | None = None,
    region: torch.Tensor | None = None,
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
        adapter_steps: (start, end): the LoRA acts on steps start..end-1 only (the base model elsewhere).
        sde_window: (starts [B], K): sample b's steps starts[b]..starts[b]+K-1 are the policy's stochastic steps, the
            others the sampler's deterministic step, and only the window is stored; None: every step stochastic.
        region: [B or 1, 1, h, w] in [0, 1]: the LoRA changes the prediction only there (``policy_output``); None: everywhere.
        progress: show a progress bar over the steps (on a terminal), labelled ``desc``.

    Returns:
        Trajectories with latents [B, K + 1, C, h, w], log_probs [B, K, C, h, w] (K = T without a window), images
        [B, 3, H, W].
    """
    family = as_family(model)
    latent_shape = family.latent_shape(height, width)
    conditioning = family.encode_prompts(list(prompts), guidance_scale)
    timesteps = family.set_timesteps(num_steps, latent_shape)
    latents = initial_noise.float() if initial_noise is not None else family.initial_noise(len(prompts), latent_shape, generator)
    record = _Recorder(latents, sde_window)
    for j, t in enumerate(bar(timesteps, desc=desc, enabled=progress)):
        outside = adapter_steps is not None and not adapter_steps[0] <= j < adapter_steps[1]
        with adapters_off(family.denoiser) if outside else contextlib.nullcontext():
            model_output = policy_output(family, family.denoiser, latents, t.expand(len(prompts)), conditioning, guidance_scale,
                                         None if outside else region)  # fmt: skip
        step = family.step(model_output, t, latents, noise_level, generator=generator)  # drawn on every step: a sample's
        latents = record.step(j, step, lambda: family.deterministic_step(model_output, t, latents))  # noise is its seed's
    return Trajectories(
        prompts=list(prompts),
        conditioning=conditioning,
        timesteps=timesteps.clone(),
        latents=record.latents(),
        log_probs=record.log_probs(),
        images=family.decode(latents),
        metadata=[dict(m) for m in metadata] if metadata is not None else [{} for _ in prompts],
        window_start=None if sde_window is None else sde_window[0].clone(),
        final_latents=None if sde_window is None else latents,
        region=None if region is None else region.expand(len(prompts), *region.shape[1:]).clone(),
    )


class _Recorder:
    """Keeps the stored part of a sampling loop: every step, or each sample's SDE window (``sample_trajectories``)."""

    def __init__(self, initial: torch.Tensor, sde_window: tuple[torch.Tensor, int] | None) -> None:
        self.window = sde_window
        if sde_window is None:
            self.all_latents, self.all_log_probs = [initial], []
        else:
            starts, length = sde_window
            self.starts = starts.to(initial.device).long()
            self.stored = initial.new_zeros((len(initial), length + 1, *initial.shape[1:]))
            self.stored_log_probs = initial.new_zeros((len(initial), length, *initial.shape[1:]))
            self._store(self.stored, self.starts == 0, 0, initial)

    @staticmethod
    def _store(buffer: torch.Tensor, rows: torch.Tensor, index: torch.Tensor | int, values: torch.Tensor) -> None:
        rows = rows.nonzero().flatten()
        if len(rows):
            buffer[rows, torch.as_tensor(index, device=buffer.device).expand(len(buffer))[rows]] = values[rows]

    def step(self, j: int, step: StepOutput, deterministic: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The latents after step j: the policy's draw inside a sample's window, the deterministic step outside it."""
        if self.window is None:
            self.all_latents.append(step.prev_sample)
            self.all_log_probs.append(step.log_prob)
            return step.prev_sample
        length = self.window[1]
        inside = (self.starts <= j) & (j < self.starts + length)  # [B]
        latents = step.prev_sample if bool(inside.all()) else torch.where(inside.view(-1, *[1] * (step.prev_sample.ndim - 1)),
                                                                           step.prev_sample, deterministic())  # fmt: skip
        self._store(self.stored_log_probs, inside, j - self.starts, step.log_prob)
        self._store(self.stored, inside, j + 1 - self.starts, latents)
        self._store(self.stored, self.starts == j + 1, 0, latents)  # the state a window starts from
        return latents

    def latents(self) -> torch.Tensor:
        return torch.stack(self.all_latents, dim=1) if self.window is None else self.stored

    def log_probs(self) -> torch.Tensor:
        return torch.stack(self.all_log_probs, dim=1) if self.window is None else self.stored_log_probs


def recompute_log_prob(
    model: DiffusionPipeline | ModelFamily,
    denoiser: torch.nn.Module,
    trajectories: Trajectories,
    sample_index: torch.Tensor,
    step_index: torch.Tensor,
    *,
    guidance_scale: float,
    noise_level: float,
    regional: bool = True,
) -> StepOutput:
    """The current policy's log-probability of recorded steps, exactly as they were sampled.

    The scheduler is set to the trajectories' steps first, so nothing depends on what ran on it before.

    Args:
        model: the pipeline or ``ModelFamily`` that sampled.
        denoiser: the policy's UNet or transformer (possibly wrapped for distributed training).
        trajectories: the sampled batch.
        sample_index: [b] which samples.
        step_index: [b] which stored step j of each sample (the transition latents[j] -> latents[j + 1]; with an SDE
            window, denoising step ``trajectories.step_of(sample_index, step_index)``).
        guidance_scale, noise_level: as used while sampling.
        regional: the LoRA acts in each sample's ``trajectories.region`` (when it has one); False: the denoiser as it is
            (e.g. the reference policy, with its adapters off).

    Returns:
        StepOutput whose log_prob [b, C, h, w] carries gradients into the denoiser.
    """
    family = _sampled_steps(model, trajectories)
    latents = trajectories.latents[sample_index, step_index]
    timesteps = trajectories.timesteps[trajectories.step_of(sample_index, step_index)]
    conditioning = trajectories.conditioning[sample_index]
    region = _region_rows(trajectories, sample_index) if regional else None
    model_output = policy_output(family, denoiser, latents, timesteps, conditioning, guidance_scale, region)
    return family.step(
        model_output, timesteps, latents, noise_level, prev_sample=trajectories.latents[sample_index, step_index + 1]
    )


def _region_rows(trajectories: Trajectories, sample_index: torch.Tensor) -> torch.Tensor | None:
    """The regions [b, 1, h, w] of samples ``sample_index`` [b] (None: no region, the LoRA everywhere)."""
    region = trajectories.region
    return None if region is None else region[sample_index.to(region.device)]


def _sampled_steps(model: DiffusionPipeline | ModelFamily, trajectories: Trajectories) -> ModelFamily:
    """The model's family with its scheduler set to the trajectories' own steps (checked), whatever ran on it before."""
    family = as_family(model)
    timesteps = family.set_timesteps(len(trajectories.timesteps), tuple(trajectories.latents.shape[2:]))
    if not torch.equal(timesteps.to(trajectories.timesteps.device), trajectories.timesteps):
        raise ValueError("these trajectories were sampled with other timesteps than the scheduler's: score them with the model that sampled them")
    return family


def velocity_on_forward_process(
    model: DiffusionPipeline | ModelFamily,
    denoiser: torch.nn.Module,
    trajectories: Trajectories,
    sample_index: torch.Tensor,
    step_index: torch.Tensor,
    noise: torch.Tensor,
    *,
    guidance_scale: float,
    regional: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A flow model's velocity on the forward process of its own samples, and the flow-matching target.

    The final latents x_0 of samples ``sample_index`` [b] are noised to the sampler's timesteps ``step_index`` [b]
    (indices into ``trajectories.timesteps``): x_t = (1 - sigma) x_0 + sigma noise (the scheduler's ``scale_noise``).

    The LoRA acts in each sample's ``trajectories.region``, as in ``policy_output`` (``regional``: as in
    ``recompute_log_prob``).

    Returns:
        (v, target): the (guided) velocity v(x_t, t) [b, C, h, w], with gradients into ``denoiser``, and noise - x_0.
    """
    family = _sampled_steps(model, trajectories)
    timesteps = trajectories.timesteps[step_index]
    clean = trajectories.clean_latents[sample_index].float()
    noised = family.pipe.scheduler.scale_noise(clean, timesteps, noise.float())
    region = _region_rows(trajectories, sample_index) if regional else None
    velocity = policy_output(family, denoiser, noised, timesteps, trajectories.conditioning[sample_index], guidance_scale, region)
    return velocity.float(), noise.float() - clean


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
        with adapters_off(self.reference_denoiser), self.autocast():
            return recompute_log_prob(
                self.family, self.reference_denoiser, trajectories, rows, steps, guidance_scale=self.guidance_scale,
                noise_level=self.noise_level, regional=False,
            )  # fmt: skip

    @property
    def reference_denoiser(self) -> torch.nn.Module:
        """The unwrapped network, which holds the LoRA adapters that the reference policy switches off."""
        return self.unwrapped if self.unwrapped is not None else self.denoiser

    def velocity(self, trajectories: Trajectories, rows: torch.Tensor, steps: torch.Tensor, noise: torch.Tensor, reference: bool = False):
        """(v, target) of ``velocity_on_forward_process``: the current policy's, with gradients, or the reference
        policy's (the LoRA off, no gradient)."""
        if reference:
            with torch.no_grad(), adapters_off(self.reference_denoiser), self.autocast():
                return velocity_on_forward_process(self.family, self.reference_denoiser, trajectories, rows, steps, noise,
                                                   guidance_scale=self.guidance_scale, regional=False)  # fmt: skip
        with self.autocast():
            return velocity_on_forward_process(self.family, self.denoiser, trajectories, rows, steps, noise, guidance_scale=self.guidance_scale)


@contextlib.contextmanager
def adapters_off(denoiser: torch.nn.Module):
    """The denoiser with its LoRA adapters switched off inside the block (the base model); on again after it, unless
    they were off already (the blocks nest)."""
    if _adapters_disabled(denoiser):
        yield denoiser
        return
    denoiser.disable_adapters()
    try:
        yield denoiser
    finally:
        denoiser.enable_adapters()


def _adapters_disabled(denoiser: torch.nn.Module) -> bool:
    """Whether the denoiser's peft LoRA layers are switched off (``disable_adapters`` switches all of them: the first
    one says, so a call on every denoiser step does not walk the whole network)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return next((module.disable_adapters for module in denoiser.modules() if isinstance(module, BaseTunerLayer)), False)
