"""Forward-process algorithms: Advantage Weighted Matching (AWM, arXiv 2509.25050), per image and per pixel.

AWM trains a flow model on its own samples with the flow-matching loss weighted by the advantage. Each sample's final
latents x_0 are noised to one of the sampler's timesteps, x_t = (1 - sigma_t) x_0 + sigma_t eps, and the per-element

    l = -(v(x_t, t) - (eps - x_0))^2                       (``pxpo.losses.matching_log_likelihood``)

enters PPO's clipped surrogate where a policy gradient puts a step's log-probability (as Flow-Factory's AWM trainer
does with the element mean). Training is decoupled from sampling: any rollout gives x_0 (the SDE, an SDE window, or
every step deterministic: ``sample.sde_window = [k, k]``); the sampler's log-probabilities are not used.

- ``awm``: the published algorithm: one advantage per image, on the element-mean l.
- ``pxawm``: pixel-wise AWM (new in pxpo): each element's l weighted by the advantage at its own location. At ratio 1,
  on advantage maps constant over each image, its loss and gradient equal ``awm``'s (tests/test_matching.py).

Training timesteps are the sampler's own (Flow-Factory's "discrete" strategy): the steps ``training_batches`` draws
(every step, or ``train.step_window``, times ``train.timestep_fraction``) index the trajectories' timesteps. The noise
eps of each (sample, step) pair is drawn from (epoch, process, sample, step), so every visit sees the same x_t. The
old likelihood (the ratio's denominator) is the sampling policy's: when an epoch makes one optimiser step it is the
current one, detached; otherwise it is computed for every trained pair before the update (one forward pass each).
Stabilisers: ``train.clip_range`` (the ratio clip), ``train.kl_coef`` (per element (v - v_base)^2, the velocity-space
KL to the base model), ``train.preserve_coef`` (the same, or the trust region, on unjudged locations).
"""

from __future__ import annotations

import numpy as np
import torch

from pxpo.algorithms import Algorithm, Batch, PerImage, PerLocation, register_algorithm
from pxpo.families import ModelFamily
from pxpo.families.flow import FlowMatchingFamily
from pxpo.losses import LossOutput, matching_log_likelihood, preservation, trust_region
from pxpo.rollout import Policy


def pair_noise(seed: int, rows: torch.Tensor, steps: torch.Tensor, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The forward-process noise eps [b, *shape] of (sample ``rows[i]``, step ``steps[i]``) pairs: one generator per
    pair, seeded from (``seed``, row, step), so a pair's noise does not depend on the batch it is trained in."""
    noise = []
    for row, step in zip(rows.tolist(), steps.tolist()):
        pair_seed = int(np.random.SeedSequence([seed, row, step]).generate_state(1)[0])
        noise.append(torch.randn(shape, generator=torch.Generator().manual_seed(pair_seed)))
    return torch.stack(noise).to(device)


class Matching(Algorithm):
    """Advantage-weighted flow matching on the forward process of the policy's own samples (flow families only)."""

    needs_log_probs = False

    def check_family(self, family: ModelFamily) -> None:
        if not isinstance(family, FlowMatchingFamily):
            raise ValueError(
                f"train.algorithm = {self.name!r} trains flow-matching models (a velocity target); {type(family.pipe).__name__} "
                "is a DDIM model: use pxpo or ddpo"
            )

    def prepare(self, policy: Policy, batch: Batch, rows: torch.Tensor, steps: torch.Tensor, seed: int) -> None:
        """This epoch's noise seed, and the sampling policy's likelihood of every trained pair when the update makes
        more than one optimiser step (the weights move before later pairs are trained)."""
        train = self.config.train
        self.seed, self.old = seed, None
        optimizer_steps = train.num_inner_epochs * (len(batch.trajectories) // train.batch_size) // train.gradient_accumulation_steps
        if optimizer_steps <= 1:
            return  # on-policy: the old likelihood is the current one
        trajectories = batch.trajectories
        device, num_steps = trajectories.latents.device, len(trajectories.timesteps)
        self.old = torch.full((len(trajectories), num_steps, *self.latent_shape), float("nan"), device=device)
        pairs = torch.unique(rows.cpu() * num_steps + steps.cpu())  # each pair once, whatever the inner epochs repeat
        with torch.no_grad():
            for chunk in pairs.split(train.batch_size * train.timesteps_per_forward):  # the update's call size
                chunk_rows, chunk_steps = (chunk // num_steps).to(device), (chunk % num_steps).to(device)
                noise = self.noise(batch, chunk_rows, chunk_steps)
                self.old[chunk_rows, chunk_steps] = self.likelihood(policy, batch, chunk_rows, chunk_steps, noise)[0]

    def noise(self, batch: Batch, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """This epoch's forward-process noise eps [b, C, h, w] of the (sample, step) pairs (``pair_noise``)."""
        return pair_noise(self.seed, rows, steps, self.latent_shape, batch.trajectories.latents.device)

    def likelihood(self, policy: Policy, batch: Batch, rows: torch.Tensor, steps: torch.Tensor, noise: torch.Tensor):
        """(l [b, C, h, w], v [b, C, h, w]): the current policy's matching log-likelihood of the pairs, noised with
        ``noise``, and the velocity behind it."""
        velocity, target = policy.velocity(batch.trajectories, rows, steps, noise)
        return matching_log_likelihood(velocity, target), velocity

    def loss(self, policy: Policy, batch: Batch, rows: torch.Tensor, steps: torch.Tensor) -> LossOutput:
        train = self.config.train
        noise = self.noise(batch, rows, steps)  # drawn once: the policy and its reference see the same x_t
        log_likelihood, velocity = self.likelihood(policy, batch, rows, steps, noise)
        old = log_likelihood.detach() if self.old is None else self.old[rows, steps]
        output = self.surrogate(log_likelihood, old, batch.advantages[rows])
        preserve_base = batch.keep is not None and train.preserve_reference == "base"
        if train.kl_coef > 0 or preserve_base:
            base, _ = policy.velocity(batch.trajectories, rows, steps, noise, reference=True)
            velocity_kl = (velocity - base) ** 2  # per element: the KL of two flow policies' steps, up to a time weight
        if train.kl_coef > 0:
            output.kl = velocity_kl.mean()
            output.loss = output.loss + train.kl_coef * output.kl
        if batch.keep is not None:
            divergence = velocity_kl if preserve_base else trust_region(log_likelihood, old)
            output.preserve = preservation(divergence, batch.keep[rows])
            output.loss = output.loss + train.preserve_coef * output.preserve
        return output


@register_algorithm("awm")
class AWM(PerImage, Matching):
    """Advantage Weighted Matching as published: one advantage per image, on the element-mean matching likelihood."""

    default_clip_range = 1e-5  # Flow-Factory's recommended AWM ratio clip (element-mean ratio)


@register_algorithm("pxawm")
class PixelAWM(PerLocation, Matching):
    """Pixel-wise AWM: each latent element's matching likelihood weighted by the advantage at its own location."""

    default_clip_range = 2e-4  # per element: 20 x the element-mean clip, as PXPO's is 20 x DDPO's (docs/clip_range.md)
