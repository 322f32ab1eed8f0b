"""Sampling that keeps the per-element log-probability of every denoising step, for every model family.

A latent diffusion model with a stochastic sampler is a policy: each step draws
x_next ~ N(mean_theta(x, t, c), std_t^2 I). Two such steps are here:

- ``ddim_step_with_logprob``: DDIM with eta > 0 (Stable Diffusion v1/v2-class UNets);
- ``flow_step_with_logprob``: the SDE of Flow-GRPO for flow-matching models (SD3, FLUX).

PXPO needs the log-probability of every latent element separately, so nothing here reduces over
elements; the reduction belongs in the loss. The data types that carry sampled steps (``StepOutput``,
``Conditioning``, ``Trajectories``) live here too; the loop that runs a family's denoiser through these
steps is ``pxpo.rollout``, one layer up.

Shapes: B batch, T denoising steps, C latent channels, h x w latent grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from pxpo.diffusers_private import threshold_sample

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class StepOutput:
    """One denoising step as a Gaussian policy. All tensors are float32.

    Attributes:
        prev_sample: the next latents [B, C, h, w], drawn from N(mean, std^2) or given by the caller.
        log_prob: log N(prev_sample | mean, std^2) per element [B, C, h, w] (not reduced).
        mean: the Gaussian's mean [B, C, h, w].
        std: the Gaussian's standard deviation, one per sample [B, 1, 1, 1] (or [B, 1, 1] for token latents).
    """

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, 1] so that per-sample scalars broadcast over latents."""
    return values.reshape(-1, 1, 1, 1)


DDIMStepOutput = StepOutput  # the name of earlier releases


def _check_step_inputs(has_timesteps: bool, model_output: torch.Tensor, sample: torch.Tensor) -> None:
    """What both policy steps need: a scheduler with timesteps set, and a model output shaped like the sample."""
    if not has_timesteps:
        raise ValueError("the scheduler has no timesteps: call scheduler.set_timesteps(num_steps) first")
    if model_output.shape != sample.shape:
        raise ValueError(f"model_output has shape {tuple(model_output.shape)}, sample {tuple(sample.shape)}: they must match")


def _gaussian(mean: torch.Tensor, std: torch.Tensor, prev_sample: torch.Tensor | None, generator: Generator) -> StepOutput:
    """Draw ``prev_sample`` from N(mean, std^2) unless given; its per-element log-density."""
    if prev_sample is None:
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        prev_sample = mean + std * noise
    prev_sample = prev_sample.detach().float()
    log_prob = -((prev_sample - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI
    return StepOutput(prev_sample=prev_sample, log_prob=log_prob, mean=mean, std=std)


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    generator: Generator = None,
) -> StepOutput:
    """One stochastic DDIM step x_t -> x_{t-1}, with the per-element log-probability.

    Computes the same mean and standard deviation as ``DDIMScheduler.step`` (epsilon, v and sample
    prediction; clipping and thresholding as the scheduler's config says), but also returns the
    Gaussian log-density of ``prev_sample`` for every latent element.

    Args:
        scheduler: a DDIMScheduler on which ``set_timesteps`` has been called.
        model_output: the (guided) UNet output [B, C, h, w].
        timestep: the current timestep t, an int or a tensor of shape [] or [B] (one per sample).
        sample: x_t [B, C, h, w].
        eta: DDIM's noise weight; must be > 0 (eta = 0 is deterministic: no log-probability).
        prev_sample: x_{t-1} [B, C, h, w] to score. If None, it is drawn from the step's Gaussian.
        generator: torch generator(s) for the draw (one per sample, or one for the batch).

    Returns:
        StepOutput with prev_sample, log_prob [B, C, h, w], mean [B, C, h, w], std [B, 1, 1, 1].
    """
    if not eta > 0:
        raise ValueError(f"eta = {eta!r}: the policy's log-probability needs eta > 0 (eta = 0 is deterministic)")
    _check_step_inputs(scheduler.num_inference_steps is not None, model_output, sample)

    device = sample.device
    batch = sample.shape[0]
    t = torch.as_tensor(timestep, device=device).long().reshape(-1).expand(batch)
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, device=device, dtype=torch.float32)
    abar_t = _per_sample(alphas_cumprod[t])
    abar_prev = _per_sample(torch.where(prev_t >= 0, alphas_cumprod[prev_t.clamp(min=0)], final_alpha))

    x_t = sample.float()
    output = model_output.float()
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        x0_hat = (x_t - (1 - abar_t).sqrt() * output) / abar_t.sqrt()
        eps = output
    elif prediction_type == "v_prediction":
        x0_hat = abar_t.sqrt() * x_t - (1 - abar_t).sqrt() * output
        eps = abar_t.sqrt() * output + (1 - abar_t).sqrt() * x_t
    elif prediction_type == "sample":
        x0_hat = output
        eps = (x_t - abar_t.sqrt() * x0_hat) / (1 - abar_t).sqrt()
    else:
        raise ValueError(f"scheduler prediction_type = {prediction_type!r}: expected 'epsilon', 'v_prediction' or 'sample'")

    if scheduler.config.thresholding:
        x0_hat = threshold_sample(scheduler, x0_hat)
    elif scheduler.config.clip_sample:
        limit = scheduler.config.clip_sample_range
        x0_hat = x0_hat.clamp(-limit, limit)

    variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
    std = eta * variance.sqrt()
    if not bool((std > 0).all()):
        raise ValueError(
            f"timestep {t.tolist()} has zero variance (a scheduler with set_alpha_to_one=True makes the last step "
            "deterministic): its log-probability is undefined"
        )
    mean = abar_prev.sqrt() * x0_hat + (1 - abar_prev - std**2).clamp(min=0).sqrt() * eps
    return _gaussian(mean, std, prev_sample, generator)


def flow_step_index(scheduler: FlowMatchEulerDiscreteScheduler, timestep: float | torch.Tensor, batch: int) -> torch.Tensor:
    """Positions [B] of ``timestep`` (a scalar or one per sample) in ``scheduler.timesteps``; an error if absent."""
    timesteps = scheduler.timesteps.float().cpu()
    t = torch.as_tensor(timestep, dtype=torch.float32).detach().cpu().reshape(-1).expand(batch)
    distance = (t[:, None] - timesteps[None, :]).abs()
    index = distance.argmin(dim=1)
    tolerance = 1e-3 * max(1.0, float(timesteps.abs().max()))
    if bool((distance.gather(1, index[:, None]) > tolerance).any()):
        raise ValueError(f"timestep {t.tolist()}: not one of the scheduler's timesteps {[round(v, 3) for v in timesteps.tolist()]}")
    return index


def flow_step_with_logprob(
    scheduler: FlowMatchEulerDiscreteScheduler,
    model_output: torch.Tensor,
    timestep: float | torch.Tensor,
    sample: torch.Tensor,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: Generator = None,
) -> StepOutput:
    """One step of the flow-matching SDE of Flow-GRPO (Liu et al. 2025), with the per-element log-probability.

    The ODE x_next = x + dt v (the scheduler's Euler step) becomes an SDE with the same marginals; with
    sigma = sigmas[i] and dt = sigmas[i + 1] - sigma (< 0):

        std_t = noise_level * sqrt(sigma / (1 - sigma))        (sigma = 1 replaced by sigmas[1] in the denominator)
        mean  = x + dt * (v + std_t^2 / (2 sigma) * (x + (1 - sigma) v))
        std   = std_t * sqrt(-dt)

    As noise_level -> 0 the mean is the Euler step.

    Args:
        scheduler: a FlowMatchEulerDiscreteScheduler on which ``set_timesteps`` has been called.
        model_output: the (guided) velocity prediction v [B, C, h, w] (or [B, N, D] for packed tokens).
        timestep: one of ``scheduler.timesteps``: a number, or a tensor [] or [B] (one per sample).
        sample: x at that timestep, same shape as ``model_output``.
        noise_level: the SDE's noise weight a, > 0 (Flow-GRPO uses 0.7).
        prev_sample: the next latents to score; drawn from the step's Gaussian when None.
        generator: torch generator(s) for the draw (one per sample, or one for the batch).

    Returns:
        StepOutput with prev_sample, log_prob (same shape as ``sample``, not reduced), mean, std [B, 1, ...].
    """
    if not noise_level > 0:
        raise ValueError(f"noise_level = {noise_level!r}: the policy's log-probability needs noise_level > 0 (0 is the deterministic ODE)")
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise TypeError(f"flow_step_with_logprob needs a FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}")
    _check_step_inputs(scheduler.num_inference_steps is not None and getattr(scheduler, "sigmas", None) is not None, model_output, sample)
    batch, device = sample.shape[0], sample.device
    index = flow_step_index(scheduler, timestep, batch)
    sigmas = scheduler.sigmas.float().cpu()
    shape = (batch,) + (1,) * (sample.ndim - 1)
    sigma = sigmas[index].reshape(shape).to(device)
    dt = (sigmas[index + 1] - sigmas[index]).reshape(shape).to(device)
    denominator = torch.where(sigma >= 1, sigmas[1].to(device), sigma)
    std_t = noise_level * torch.sqrt(sigma / (1 - denominator))
    x, v = sample.float(), model_output.float()
    mean = x + dt * (v + std_t**2 / (2 * sigma) * (x + (1 - sigma) * v))
    std = std_t * torch.sqrt(-dt)
    if not bool((std > 0).all()):
        raise ValueError(f"timestep {scheduler.timesteps[index].tolist()} has zero variance: its log-probability is undefined")
    return _gaussian(mean, std, prev_sample, generator)


@dataclass
class Conditioning:
    """A batch's text conditioning: batch-first tensors by name (each family chooses its names).

    SD: ``embeds``, ``negative_embeds``; SD3: the same plus ``pooled``, ``negative_pooled``;
    FLUX: ``embeds``, ``pooled``. Indexing selects samples; ``cat`` joins batches.
    """

    tensors: dict[str, torch.Tensor]

    def __getitem__(self, index: torch.Tensor | slice) -> Conditioning:
        return Conditioning({name: value[index] for name, value in self.tensors.items()})

    def get(self, name: str) -> torch.Tensor | None:
        return self.tensors.get(name)

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        return Conditioning({name: torch.cat([p.tensors[name] for p in parts]) for name in parts[0].tensors})


@dataclass
class Trajectories:
    """A batch of sampled denoising trajectories: everything training needs to recompute log-probs.

    Attributes:
        prompts: the B prompts.
        conditioning: the text conditioning used while sampling (B rows).
        timesteps: [T] the scheduler's timesteps, first to last.
        latents: [B, T + 1, C, h, w]: the initial noise ... the final latents, on the latent grid.
        log_probs: [B, T, C, h, w]: per-element log p(latents[:, j + 1] | latents[:, j]).
        images: [B, 3, H, W] decoded final latents in [0, 1].
        metadata: B dicts that travel with the samples to the reward (the prompt's extras, the epoch, ...).
    """

    prompts: list[str]
    conditioning: Conditioning
    timesteps: torch.Tensor
    latents: torch.Tensor
    log_probs: torch.Tensor
    images: torch.Tensor
    metadata: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    @staticmethod
    def cat(parts: Sequence[Trajectories]) -> Trajectories:
        """Concatenate batches sampled with the same timesteps."""
        return Trajectories(
            prompts=[p for part in parts for p in part.prompts],
            conditioning=Conditioning.cat([p.conditioning for p in parts]),
            timesteps=parts[0].timesteps,
            latents=torch.cat([p.latents for p in parts]),
            log_probs=torch.cat([p.log_probs for p in parts]),
            images=torch.cat([p.images for p in parts]),
            metadata=[m for part in parts for m in part.metadata],
        )
