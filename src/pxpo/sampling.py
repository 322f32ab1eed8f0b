"""Sampling that keeps the per-element log-probability of every denoising step, for every model family.

A latent diffusion model with a stochastic sampler is a policy: each step draws
x_next ~ N(mean_theta(x, t, c), std_t^2 I). Two such steps are here:

- ``ddim_step_with_logprob``: DDIM with eta > 0 (Stable Diffusion v1/v2-class UNets);
- ``flow_step_with_logprob``: the SDE of Flow-GRPO for flow-matching models (SD3, FLUX);
- ``cps_step_with_logprob``: coefficients-preserving sampling (CPS, Wang & Yu 2025) for the same models.

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
    index, sigma, sigma_next = _flow_sigmas(scheduler, model_output, timestep, sample, "flow_step_with_logprob")
    dt = sigma_next - sigma
    denominator = torch.where(sigma >= 1, scheduler.sigmas[1].float().to(sigma.device), sigma)
    std_t = noise_level * torch.sqrt(sigma / (1 - denominator))
    x, v = sample.float(), model_output.float()
    mean = x + dt * (v + std_t**2 / (2 * sigma) * (x + (1 - sigma) * v))
    std = std_t * torch.sqrt(-dt)
    if not bool((std > 0).all()):
        raise ValueError(f"timestep {scheduler.timesteps[index].tolist()} has zero variance: its log-probability is undefined")
    return _gaussian(mean, std, prev_sample, generator)


def _flow_sigmas(
    scheduler: FlowMatchEulerDiscreteScheduler, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, caller: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What both flow steps read off the scheduler: the step's positions [B], its sigma and the next one, each
    [B, 1, ...] (broadcasting over ``sample``) on the sample's device; errors for a wrong scheduler or input."""
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise TypeError(f"{caller} needs a FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}")
    _check_step_inputs(scheduler.num_inference_steps is not None and getattr(scheduler, "sigmas", None) is not None, model_output, sample)
    batch, device = sample.shape[0], sample.device
    index = flow_step_index(scheduler, timestep, batch)
    sigmas = scheduler.sigmas.float().cpu()
    shape = (batch,) + (1,) * (sample.ndim - 1)
    return index, sigmas[index].reshape(shape).to(device), sigmas[index + 1].reshape(shape).to(device)


def cps_step_with_logprob(
    scheduler: FlowMatchEulerDiscreteScheduler,
    model_output: torch.Tensor,
    timestep: float | torch.Tensor,
    sample: torch.Tensor,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: Generator = None,
) -> StepOutput:
    """One coefficients-preserving sampling (CPS) step (Wang & Yu 2025, arXiv 2509.05952), with the per-element
    log-probability: a true Gaussian log-density.

    The flow x_s = (1 - s) x0 + s x1 is stepped from sigma = sigmas[i] to sigma' = sigmas[i + 1] by re-noising the
    predicted clean sample with a mix of the predicted noise and fresh noise whose coefficients keep the total noise
    at sigma' (so no step over- or under-noises, unlike the SDE at large noise levels):

        x0_hat = x - sigma v                            (the predicted clean sample)
        x1_hat = x + (1 - sigma) v                      (the predicted noise)
        std    = sigma' * sin(noise_level * pi / 2)
        mean   = (1 - sigma') x0_hat + sqrt(sigma'^2 - std^2) x1_hat     (sqrt(...) = sigma' cos(noise_level * pi / 2))

    As noise_level -> 0 the mean is the scheduler's Euler step x + (sigma' - sigma) v; at 1 the predicted noise is
    replaced by fresh noise entirely. Flow-GRPO's CPS code keeps only -(prev_sample - mean)^2 as its log-probability
    (a surrogate without the 1 / (2 std^2) scale and the normaliser); here it is log N(prev_sample | mean, std^2), so
    that policy ratios, the PPO clip and the KL are those of the policy that sampled.

    The last step (sigma' = 0) is deterministic: std = 0 and prev_sample = x0_hat. Its draw is certain given its
    input, so its log_prob is recorded as 0; it cannot be scored (a ValueError when ``prev_sample`` is given), and
    training leaves it out (``Config.step_range`` ends before it).

    Args: as ``flow_step_with_logprob``; noise_level is CPS's eta, in (0, 1] (Flow-GRPO uses 0.8).

    Returns:
        StepOutput with prev_sample, log_prob (same shape as ``sample``, not reduced), mean, std [B, 1, ...].
    """
    if not 0 < noise_level <= 1:
        raise ValueError(f"noise_level = {noise_level!r}: CPS needs noise_level in (0, 1] (0 is the deterministic ODE)")
    index, sigma, sigma_next = _flow_sigmas(scheduler, model_output, timestep, sample, "cps_step_with_logprob")
    x, v = sample.float(), model_output.float()
    angle = noise_level * math.pi / 2
    std = sigma_next * math.sin(angle)
    mean = (1 - sigma_next) * (x - sigma * v) + sigma_next * math.cos(angle) * (x + (1 - sigma) * v)
    if bool((std > 0).all()):
        return _gaussian(mean, std, prev_sample, generator)
    if prev_sample is None and not bool((std > 0).any()):
        return StepOutput(prev_sample=mean.detach(), log_prob=torch.zeros_like(mean), mean=mean, std=std)
    raise ValueError(
        f"timestep {scheduler.timesteps[index].tolist()} includes CPS's last step, which is deterministic (std 0): "
        "its log-probability is undefined; score only the steps before it"
    )


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
        region: [B, 1, h, w] in [0, 1]: where each sample's LoRA acts (``train.regional_adapter``,
            ``pxpo.rollout.policy_output``); None: everywhere.
    """

    prompts: list[str]
    conditioning: Conditioning
    timesteps: torch.Tensor
    latents: torch.Tensor
    log_probs: torch.Tensor
    images: torch.Tensor
    metadata: list[dict] = field(default_factory=list)
    window_start: torch.Tensor | None = None  # [B] long: the denoising step of each sample's first stored step (None: 0)
    final_latents: torch.Tensor | None = None  # [B, C, h, w]: x_0 when the stored steps end before it (None: latents[:, -1])
    region: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def step_of(self, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The denoising steps [b] (indices into ``timesteps``) of stored steps ``steps`` [b] of samples ``rows`` [b]."""
        return steps if self.window_start is None else self.window_start.to(steps.device)[rows] + steps

    @property
    def clean_latents(self) -> torch.Tensor:
        """x_0, the final latents [B, C, h, w] (what the images decode)."""
        return self.final_latents if self.final_latents is not None else self.latents[:, -1]

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
            window_start=_cat_optional([p.window_start for p in parts]),
            final_latents=_cat_optional([p.final_latents for p in parts]),
            region=_cat_optional([p.region for p in parts]),
        )


def _cat_optional(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The tensors concatenated, or None when they are all None (batches sampled alike)."""
    return None if tensors[0] is None else torch.cat(list(tensors))


def flow_ode_step(scheduler: FlowMatchEulerDiscreteScheduler, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """The flow ODE's Euler step x + (sigmas[i + 1] - sigmas[i]) v [B, ...]: the deterministic sampler outside an SDE
    window (what ``FlowMatchEulerDiscreteScheduler.step`` computes, without its internal step counter)."""
    _, sigma, sigma_next = _flow_sigmas(scheduler, model_output, timestep, sample, "flow_ode_step")
    return sample.float() + (sigma_next - sigma) * model_output.float()
