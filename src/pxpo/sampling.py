"""DDIM sampling that keeps the per-element log-probability of every denoising step.

A latent diffusion model with a stochastic DDIM sampler (eta > 0) is a policy: each step draws
x_{t-1} ~ N(mean_theta(x_t, t, c), std_t^2 I). PXPO needs the log-probability of every latent
element separately, so nothing here reduces over elements; the reduction belongs in the loss.

Shapes: B batch, T denoising steps, C latent channels, h x w latent grid, L tokens, D text width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class DDIMStepOutput:
    """One DDIM step as a Gaussian policy. All tensors are float32.

    Attributes:
        prev_sample: x_{t-1} [B, C, h, w], drawn from N(mean, std^2) or given by the caller.
        log_prob: log N(prev_sample | mean, std^2) per element [B, C, h, w] (not reduced).
        mean: the Gaussian's mean [B, C, h, w].
        std: the Gaussian's standard deviation, one per sample [B, 1, 1, 1].
    """

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, 1] so that per-sample scalars broadcast over latents."""
    return values.reshape(-1, 1, 1, 1)


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    generator: Generator = None,
) -> DDIMStepOutput:
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
        DDIMStepOutput with prev_sample, log_prob [B, C, h, w], mean [B, C, h, w], std [B, 1, 1, 1].
    """
    if not eta > 0:
        raise ValueError(f"eta = {eta!r}: the policy's log-probability needs eta > 0 (eta = 0 is deterministic)")
    if scheduler.num_inference_steps is None:
        raise ValueError("the scheduler has no timesteps: call scheduler.set_timesteps(num_steps) first")
    if model_output.shape != sample.shape:
        raise ValueError(f"model_output has shape {tuple(model_output.shape)}, sample {tuple(sample.shape)}: they must match")

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
        x0_hat = scheduler._threshold_sample(x0_hat)
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

    if prev_sample is None:
        noise = randn_tensor(mean.shape, generator=generator, device=device, dtype=torch.float32)
        prev_sample = mean + std * noise
    prev_sample = prev_sample.detach().float()
    log_prob = -((prev_sample - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI
    return DDIMStepOutput(prev_sample=prev_sample, log_prob=log_prob, mean=mean, std=std)


def predict_noise(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """The UNet's output with classifier-free guidance.

    Args:
        unet: a UNet2DConditionModel (or a wrapper of one, e.g. DDP).
        latents: x_t [B, C, h, w].
        timesteps: [B] or [] timesteps.
        prompt_embeds: text embeddings [B, L, D].
        negative_embeds: unconditional embeddings [B, L, D]; None for no guidance.
        guidance_scale: w in eps_u + w (eps_c - eps_u); guidance is applied when w > 1.

    Returns:
        The guided model output [B, C, h, w].
    """
    dtype = prompt_embeds.dtype
    timesteps = timesteps.reshape(-1).expand(latents.shape[0])
    if negative_embeds is None or guidance_scale <= 1:
        return unet(latents.to(dtype), timesteps, encoder_hidden_states=prompt_embeds).sample
    both = unet(
        torch.cat([latents, latents]).to(dtype),
        torch.cat([timesteps, timesteps]),
        encoder_hidden_states=torch.cat([negative_embeds, prompt_embeds]),
    ).sample
    uncond, cond = both.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@dataclass
class Trajectories:
    """A batch of sampled denoising trajectories: everything training needs to recompute log-probs.

    Attributes:
        prompts: the B prompts.
        prompt_embeds: [B, L, D] text embeddings used while sampling.
        negative_embeds: [B, L, D] unconditional embeddings, or None without guidance.
        timesteps: [T] the scheduler's timesteps, first to last.
        latents: [B, T + 1, C, h, w]: x_T (initial noise) ... x_0.
        log_probs: [B, T, C, h, w]: per-element log p(latents[:, j + 1] | latents[:, j]).
        images: [B, 3, H, W] decoded x_0 in [0, 1].
    """

    prompts: list[str]
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    timesteps: torch.Tensor
    latents: torch.Tensor
    log_probs: torch.Tensor
    images: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    @staticmethod
    def cat(parts: Sequence[Trajectories]) -> Trajectories:
        """Concatenate batches sampled with the same timesteps."""
        first = parts[0]
        return Trajectories(
            prompts=[p for part in parts for p in part.prompts],
            prompt_embeds=torch.cat([p.prompt_embeds for p in parts]),
            negative_embeds=None if first.negative_embeds is None else torch.cat([p.negative_embeds for p in parts]),
            timesteps=first.timesteps,
            latents=torch.cat([p.latents for p in parts]),
            log_probs=torch.cat([p.log_probs for p in parts]),
            images=torch.cat([p.images for p in parts]),
        )


def encode_prompts(pipe: StableDiffusionPipeline, prompts: Sequence[str], guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings [B, L, D] for the prompts, and the unconditional ones when guidance is on."""
    cond, uncond = pipe.encode_prompt(
        list(prompts), pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=guidance_scale > 1
    )
    return cond, (uncond if guidance_scale > 1 else None)


def decode_latents(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode x_0 latents [B, C, h, w] to float32 images [B, 3, H, W] in [0, 1]."""
    vae = pipe.vae
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def sample_trajectories(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    *,
    num_steps: int,
    guidance_scale: float,
    eta: float,
    generator: Generator = None,
    height: int | None = None,
    width: int | None = None,
    initial_noise: torch.Tensor | None = None,
    progress: bool = False,
) -> Trajectories:
    """Sample one trajectory per prompt with the pipeline's UNet as the policy.

    The same generator(s) give the same trajectories: pass one generator per sample (a list) to make
    each sample depend on its own seed only. With ``eta`` and seeds equal, the images equal those of
    ``pipe(prompts, eta=eta, generator=...)``.

    Args:
        pipe: a StableDiffusionPipeline whose scheduler is a DDIMScheduler.
        prompts: B prompts.
        num_steps: T, the number of DDIM steps.
        guidance_scale: classifier-free guidance weight (> 1 turns guidance on).
        eta: DDIM noise weight, > 0.
        generator: torch generator, or a list of B generators.
        height, width: image size in pixels; defaults to the UNet's sample size times the VAE factor.
        initial_noise: x_T [B, C, h, w] to start from; drawn from ``generator`` when None (the
            generator then also draws the steps' noise).
        progress: show a progress bar over the steps.

    Returns:
        Trajectories with latents [B, T + 1, C, h, w], log_probs [B, T, C, h, w], images [B, 3, H, W].
    """
    if not isinstance(pipe.scheduler, DDIMScheduler):
        raise TypeError(f"the pipeline's scheduler is {type(pipe.scheduler).__name__}: pxpo samples with a DDIMScheduler")
    unet, scheduler = pipe.unet, pipe.scheduler
    height = height or unet.config.sample_size * pipe.vae_scale_factor
    width = width or unet.config.sample_size * pipe.vae_scale_factor
    prompt_embeds, negative_embeds = encode_prompts(pipe, prompts, guidance_scale)
    scheduler.set_timesteps(num_steps, device=pipe.device)
    latents = pipe.prepare_latents(
        len(prompts), unet.config.in_channels, height, width, torch.float32, pipe.device, generator, latents=initial_noise
    )
    all_latents, all_log_probs = [latents], []
    for t in tqdm(scheduler.timesteps, desc="sampling", leave=False, disable=not progress):
        model_output = predict_noise(unet, latents, t, prompt_embeds, negative_embeds, guidance_scale)
        step = ddim_step_with_logprob(scheduler, model_output, t, latents, eta, generator=generator)
        latents = step.prev_sample
        all_latents.append(latents)
        all_log_probs.append(step.log_prob)
    return Trajectories(
        prompts=list(prompts),
        prompt_embeds=prompt_embeds,
        negative_embeds=negative_embeds,
        timesteps=scheduler.timesteps.clone(),
        latents=torch.stack(all_latents, dim=1),
        log_probs=torch.stack(all_log_probs, dim=1),
        images=decode_latents(pipe, latents),
    )


def recompute_log_prob(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    trajectories: Trajectories,
    sample_index: torch.Tensor,
    step_index: torch.Tensor,
    *,
    guidance_scale: float,
    eta: float,
) -> DDIMStepOutput:
    """The current policy's log-probability of recorded steps, exactly as they were sampled.

    Args:
        unet: the policy's UNet (possibly wrapped for distributed training).
        scheduler: the DDIMScheduler used while sampling (same number of steps).
        trajectories: the sampled batch.
        sample_index: [b] which samples.
        step_index: [b] which step j of each sample (the transition latents[j] -> latents[j + 1]).
        guidance_scale, eta: as used while sampling.

    Returns:
        DDIMStepOutput whose log_prob [b, C, h, w] carries gradients into the UNet.
    """
    negative = None if trajectories.negative_embeds is None else trajectories.negative_embeds[sample_index]
    latents = trajectories.latents[sample_index, step_index]
    timesteps = trajectories.timesteps[step_index]
    model_output = predict_noise(
        unet, latents, timesteps, trajectories.prompt_embeds[sample_index], negative, guidance_scale
    )
    return ddim_step_with_logprob(
        scheduler,
        model_output,
        timesteps,
        latents,
        eta,
        prev_sample=trajectories.latents[sample_index, step_index + 1],
    )
