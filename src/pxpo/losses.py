"""Policy-gradient losses: PXPO (per-element advantages) and DDPO (one advantage per image).

Both are the PPO clipped surrogate  mean( max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) )
with ratio = exp(log_prob - old_log_prob). They differ only in what a "element" is:

- PXPO pairs every latent element's log-probability with the advantage at its own location
  ([B, C, h, w] against [B, 1, h, w] or [B, C, h, w]) and averages over batch and elements;
- DDPO uses the element-MEAN log-probability of each image ([B]) and one advantage per image.

At ratio 1 with an advantage map that is constant over each image, both give the same gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOutput:
    """A loss and its diagnostics (scalars; the diagnostics carry no gradient).

    Attributes:
        loss: the clipped surrogate to minimise.
        approx_kl: 0.5 * mean((log_prob - old_log_prob)^2), an estimate of KL(old || new).
        clipfrac: the fraction of ratios outside [1 - clip_range, 1 + clip_range].
        kl: the KL to the reference policy, when the trainer adds one (``train.kl_coef > 0``).
        preserve: the preservation term on the locations no reward judged (``train.preserve_coef > 0``).
    """

    loss: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor
    kl: torch.Tensor | None = None
    preserve: torch.Tensor | None = None


def clipped_surrogate(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> LossOutput:
    """PPO's clipped surrogate averaged over all elements (shapes must broadcast to log_prob's)."""
    if not clip_range > 0:
        raise ValueError(f"clip_range = {clip_range!r}: expected a number > 0")
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        approx_kl = 0.5 * (log_ratio**2).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_range).float().mean()
    return LossOutput(loss=loss, approx_kl=approx_kl, clipfrac=clipfrac)


def pxpo_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> LossOutput:
    """PXPO: each latent element's log-probability weighted by the advantage at its own location.

    Args:
        log_prob: current policy's per-element log-probabilities [B, C, h, w].
        old_log_prob: the sampling policy's per-element log-probabilities [B, C, h, w].
        advantages: per-location advantages [B, 1, h, w] (broadcast over channels) or [B, C, h, w].
        clip_range: PPO clip range on each element's ratio.

    Returns:
        LossOutput with the mean over batch and elements.
    """
    if log_prob.ndim != 4 or log_prob.shape != old_log_prob.shape:
        raise ValueError(
            f"log_prob {tuple(log_prob.shape)} and old_log_prob {tuple(old_log_prob.shape)}: expected equal shapes [B, C, h, w]"
        )
    b, c, h, w = log_prob.shape
    if advantages.shape not in {(b, 1, h, w), (b, c, h, w)}:
        raise ValueError(f"advantages {tuple(advantages.shape)}: expected {(b, 1, h, w)} or {(b, c, h, w)}")
    return clipped_surrogate(log_prob, old_log_prob, advantages, clip_range)


def ddpo_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> LossOutput:
    """DDPO: one advantage per image against the image's element-mean log-probability.

    Args:
        log_prob: current policy's element-mean log-probabilities [B].
        old_log_prob: the sampling policy's element-mean log-probabilities [B].
        advantages: [B].
        clip_range: PPO clip range on the element-mean ratio (DDPO's default is 1e-4).

    Returns:
        LossOutput with the mean over the batch.
    """
    if log_prob.ndim != 1 or log_prob.shape != old_log_prob.shape or advantages.shape != log_prob.shape:
        raise ValueError(
            f"log_prob {tuple(log_prob.shape)}, old_log_prob {tuple(old_log_prob.shape)}, advantages "
            f"{tuple(advantages.shape)}: expected three tensors of shape [B]"
        )
    return clipped_surrogate(log_prob, old_log_prob, advantages, clip_range)


def gaussian_kl(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per element (mean - reference_mean)^2 / (2 std^2): the KL of N(mean, std^2) to N(reference_mean, std^2).

    Args:
        mean: the policy step's mean [B, C, h, w].
        reference_mean: the reference policy's mean for the same step [B, C, h, w].
        std: the step's standard deviation, broadcastable (e.g. [B, 1, 1, 1]).

    Returns:
        [B, C, h, w], not reduced.
    """
    return (mean - reference_mean) ** 2 / (2 * std**2)


def kl_to_reference(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(policy || reference) of two Gaussian steps with the same std (``gaussian_kl``), averaged over elements: a scalar."""
    return gaussian_kl(mean, reference_mean, std).mean()


def trust_region(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """Per element 0.5 * (log_prob - old_log_prob)^2, an estimate of the KL to the policy that sampled the step.

    Needs no second model: the old log-probabilities are recorded. Zero (with zero gradient) at ratio 1, i.e. on the
    first, on-policy optimiser step; it binds from the second (inner epochs, several training batches). [B, C, h, w].
    """
    return 0.5 * (log_prob - old_log_prob) ** 2


def preservation(per_element: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A per-element divergence [B, C, h, w] weighted by ``keep`` [B, 1, h, w] (the share of each latent cell that no
    reward judged, in [0, 1]), averaged over all elements: exactly zero where everything was judged, and its gradient
    reaches only the cells with ``keep > 0``."""
    return (keep * per_element).mean()


def matching_log_likelihood(velocity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AWM's log-likelihood surrogate per element: -(v - target)^2 [B, C, h, w], not reduced.

    The flow-matching loss ||v(x_t, t) - (eps - x_0)||^2 bounds the model's negative log-likelihood of x_0 (up to
    constants and a time weighting), so Advantage Weighted Matching (arXiv 2509.25050) puts its negative where a policy
    gradient puts a step's log-probability. Per element, it pairs with a per-location advantage as a log-probability does.
    """
    return -((velocity.float() - target.float()) ** 2)
