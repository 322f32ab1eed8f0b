"""Algorithms: how an epoch's heatmaps become advantages, and the loss that trains on them.

The trainer picks one algorithm at construction (``train.algorithm``) and never branches on which:

    rewards    = algorithm.rewards(heatmaps)            # what is normalised: PXPO [B, 1, h, w], DDPO/GRPO [B]
    advantages = algorithm.advantages(rewards, prompts, groups) # over all processes' samples (GRPO groups by id), clipped
    output     = algorithm.loss(policy, batch, rows, steps)   # for each training batch of (sample, step) pairs

What carries an advantage is one mixin: ``PerLocation`` (each latent element weighted by the heatmap at its
location: PXPO, pixel-wise AWM) or ``PerImage`` (one advantage per image: DDPO/GRPO, AWM). What is weighted is the
other: ``PolicyGradient`` (the recorded denoising steps' log-probabilities) or ``Matching`` (a forward-process
flow-matching likelihood, AWM). A new algorithm is one new module: subclass them, decorate it with
``@register_algorithm("name")`` and import the module at the bottom of this file. Shapes: B samples, T steps, C latent channels, h x w latent grid, H x W pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pxpo.advantages import PerPromptStatTracker, compute_advantages, heatmap_to_latent
from pxpo.losses import LossOutput, ddpo_loss, pxpo_loss
from pxpo.sampling import Trajectories

if TYPE_CHECKING:
    from pxpo.families import ModelFamily
    from pxpo.rollout import Policy

Config = Any  # a pxpo.config.Config (not imported: the config, one layer up, looks algorithms up by name)

_ALGORITHMS: dict[str, type[Algorithm]] = {}


@dataclass
class Batch:
    """One epoch's data on this process: trajectories, rewards and advantages."""

    trajectories: Trajectories
    heatmaps: torch.Tensor  # [B, H, W] pixel rewards
    advantages: torch.Tensor  # the algorithm's advantages: PXPO [B, 1, h, w]; DDPO/GRPO [B]
    keep: torch.Tensor | None = None  # [B, 1, h, w]: the share of each latent cell no reward judged (preservation)


class Algorithm:
    """Turns heatmaps into advantages and supplies the loss; holds the advantage statistics a run checkpoints.

    Attributes:
        name: its ``train.algorithm`` value.
        default_clip_range: ``train.clip_range`` when the config leaves it unset.
        needs_log_probs: whether it trains on the recorded steps' log-probabilities (policy gradients) or only on the
            final images' latents (forward-process algorithms, which may sample every step deterministically).
    """

    name: ClassVar[str]
    default_clip_range: ClassVar[float]
    needs_log_probs: ClassVar[bool] = True  # trains on the sampled steps' log-probabilities (False: a forward-process algorithm)

    def __init__(self, config: Config, latent_shape: tuple[int, int, int], family: ModelFamily | None = None) -> None:
        self.config = config
        self.latent_shape = latent_shape
        if family is not None:
            self.check_family(family)
        self.tracker = PerPromptStatTracker(config.advantage.per_prompt_buffer_size, config.advantage.per_prompt_min_count)

    def rewards(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """Heatmaps [B, H, W] -> the rewards this algorithm normalises (one per image, or per latent location)."""
        raise NotImplementedError

    def advantages(self, rewards: torch.Tensor, prompts: Sequence[str], groups: torch.Tensor | None = None) -> torch.Tensor:
        """All processes' rewards (same shape as ``rewards()`` gives, rows in sample order) -> advantages, normalised
        as ``advantage.normalization`` says and clipped to +-``train.adv_clip_max``. ``groups`` [B]: each sample's
        GRPO group id (``pxpo.schedule``); None: consecutive rows of ``sample.group_size``."""
        cfg = self.config
        return compute_advantages(
            rewards, list(prompts), cfg.advantage.normalization, cfg.train.adv_clip_max, self.tracker, cfg.sample.group_size, groups
        )

    def keep(self, judged: torch.Tensor | None) -> torch.Tensor | None:
        """Where to preserve: a reward's judged map bool [B, H, W] -> the unjudged share of each latent cell [B, 1, h, w],
        downsampled like the heatmaps; None when nothing is preserved (``train.preserve_coef = 0``, or a reward that judges
        every pixel by returning no judged map)."""
        if judged is None or self.config.train.preserve_coef == 0:
            return None
        return heatmap_to_latent((~judged).float(), self.latent_shape[1:], self.config.advantage.interpolation)

    def check_family(self, family: ModelFamily) -> None:
        """Refuse a model family this algorithm cannot train (one line naming both)."""

    def prepare(self, policy: Policy, batch: Batch, rows: torch.Tensor, steps: torch.Tensor, seed: int) -> None:
        """Before an epoch's update: whatever the loss needs from the policy that sampled, for the (sample ``rows[i]``,
        step ``steps[i]``) pairs [N] the update will train (``seed``: this epoch's and process's). Policy gradients need
        nothing: the trajectories hold the sampling log-probabilities."""

    def loss(self, policy: Policy, batch: Batch, rows: torch.Tensor, steps: torch.Tensor) -> LossOutput:
        """The loss of the (sample ``rows[i]``, step ``steps[i]``) pairs [b], with gradients into ``policy``."""
        raise NotImplementedError

    def surrogate(self, log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor) -> LossOutput:
        """The clipped surrogate of per-element log-probs [b, C, h, w] against the rows' advantages."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What a checkpoint keeps (the per-prompt statistics)."""
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])


class PerLocation(Algorithm):
    """Per-pixel advantages: each latent element's (log-)likelihood weighted by the heatmap at its own location."""

    def rewards(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """[B, H, W] -> the heatmaps on the latent grid [B, 1, h, w] (``advantage.interpolation``)."""
        return heatmap_to_latent(heatmaps, self.latent_shape[1:], self.config.advantage.interpolation)

    def surrogate(self, log_prob, old_log_prob, advantages):
        return pxpo_loss(log_prob, old_log_prob, advantages, self.config.train.clip_range)


class PerImage(Algorithm):
    """One advantage per image, on the element-mean (log-)likelihood (DDPO's, GRPO's, AWM's)."""

    def rewards(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """[B, H, W] -> each image's mean pixel reward [B]."""
        return heatmaps.mean(dim=(1, 2))

    def surrogate(self, log_prob, old_log_prob, advantages):
        return ddpo_loss(log_prob.mean(dim=(1, 2, 3)), old_log_prob.mean(dim=(1, 2, 3)), advantages, self.config.train.clip_range)


def register_algorithm(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: ``train.algorithm = name`` runs this class."""

    def decorate(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name = name
        _ALGORITHMS[name] = cls
        return cls

    return decorate


def available_algorithms() -> list[str]:
    return sorted(_ALGORITHMS)


def algorithm_class(name: str) -> type[Algorithm]:
    """The class registered as ``name``; a clear error naming the registered ones otherwise."""
    if name not in _ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}: expected one of {', '.join(available_algorithms())}")
    return _ALGORITHMS[name]


# The built-in algorithms register themselves on import.
from pxpo.algorithms import matching, policy_gradient  # noqa: E402,F401

__all__ = ["Algorithm", "Batch", "PerImage", "PerLocation", "algorithm_class", "available_algorithms", "register_algorithm"]
