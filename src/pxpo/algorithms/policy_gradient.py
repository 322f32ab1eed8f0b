"""Policy gradients on the recorded denoising steps: PXPO (per-pixel advantages) and DDPO/GRPO (one per image).

Both recompute the current policy's log-probability of sampled steps and minimise PPO's clipped surrogate
(``pxpo.losses``); ``train.kl_coef`` adds the per-element KL to the reference policy (the denoiser with its
LoRA switched off); ``train.preserve_coef`` adds a per-element divergence on the locations no reward judged (to the
base policy, or to the policy that sampled), for both algorithms: DDPO's advantage is per image, but what it must
leave alone is still per element. They differ only in what carries an advantage: PXPO pairs each latent element with the
heatmap at its own location; DDPO pairs each image's element-mean log-probability with the image's mean reward.
"""

from __future__ import annotations

import torch

from pxpo.algorithms import Algorithm, Batch, PerImage, PerLocation, register_algorithm
from pxpo.losses import LossOutput, gaussian_kl, kl_to_reference, preservation, trust_region
from pxpo.rollout import Policy


class PolicyGradient(Algorithm):
    """The clipped surrogate on recomputed log-probabilities, plus ``train.kl_coef`` times the KL to the reference."""

    def loss(self, policy: Policy, batch: Batch, rows: torch.Tensor, steps: torch.Tensor) -> LossOutput:
        trajectories, train = batch.trajectories, self.config.train
        step = policy.log_prob(trajectories, rows, steps)
        old_log_prob = trajectories.log_probs[rows, steps]
        output = self.surrogate(step.log_prob, old_log_prob, batch.advantages[rows])
        preserve_base = batch.keep is not None and train.preserve_reference == "base"
        base = policy.reference_log_prob(trajectories, rows, steps) if train.kl_coef > 0 or preserve_base else None  # one pass for both
        if train.kl_coef > 0:
            output.kl = kl_to_reference(step.mean, base.mean, step.std)
            output.loss = output.loss + train.kl_coef * output.kl
        if batch.keep is not None:
            divergence = gaussian_kl(step.mean, base.mean, step.std) if preserve_base else trust_region(step.log_prob, old_log_prob)
            output.preserve = preservation(divergence, batch.keep[rows])
            output.loss = output.loss + train.preserve_coef * output.preserve
        return output


@register_algorithm("pxpo")
class PXPO(PerLocation, PolicyGradient):
    """Pixel-wise policy optimisation: every latent element weighted by the advantage at its own location."""

    default_clip_range = 2e-3  # per element: clips about the share DDPO's 1e-4 clips of element-mean ratios (docs/clip_range.md)


@register_algorithm("ddpo")
class DDPO(PerImage, PolicyGradient):
    """DDPO (and GRPO with groups): one advantage per image, on the element-mean log-probability."""

    default_clip_range = 1e-4  # DDPO's, on the element-mean ratio
