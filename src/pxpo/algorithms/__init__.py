"""Algorithms: how an epoch's heatmaps become advantages, and the loss that trains on them.

The trainer picks one algorithm at construction (``train.algorithm``) and never branches on which:

    rewards    = algorithm.rewards(heatmaps)            # what is normalised: PXPO [B, 1, h, w], DDPO/GRPO [B]
    advantages = algorithm.advantages(rewards, prompts) # normalised over all processes' samples, clipped
    output     = algorithm.loss(policy, batch, rows, steps)   # for each training batch of (sample, step) pairs

A new algorithm is one new module: subclass ``Algorithm`` (or ``PolicyGradient`` for a PPO-style surrogate on
the recorded log-probabilities), decorate it with ``@register_algorithm("name")`` and import the module at the
bottom of this file. Shapes: B samples, T steps, C latent channels, h x w latent grid, H x W pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pxpo.advantages import PerPromptStatTracker, compute_advantages, heatmap_to_latent
from pxpo.losses import LossOutput
from pxpo.sampling import Trajectories

if TYPE_CHECKING:
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
    """

    name: ClassVar[str]
    default_clip_range: ClassVar[float]

    def __init__(self, config: Config, latent_shape: tuple[int, int, int]) -> None:
        self.config = config
        self.latent_shape = latent_shape
        self.tracker = PerPromptStatTracker(config.advantage.per_prompt_buffer_size, config.advantage.per_prompt_min_count)

    def rewards(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """Heatmaps [B, H, W] -> the rewards this algorithm normalises (one per image, or per latent location)."""
        raise NotImplementedError

    def advantages(self, rewards: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """All processes' rewards (same shape as ``rewards()`` gives, rows in sample order) -> advantages, normalised
        as ``advantage.normalization`` says and clipped to +-``train.adv_clip_max``."""
        cfg = self.config
        return compute_advantages(rewards, list(prompts), cfg.advantage.normalization, cfg.train.adv_clip_max, self.tracker, cfg.sample.group_size)

    def keep(self, judged: torch.Tensor | None) -> torch.Tensor | None:
        """Where to preserve: a reward's judged map bool [B, H, W] -> the unjudged share of each latent cell [B, 1, h, w],
        downsampled like the heatmaps; None when nothing is preserved (``train.preserve_coef = 0``, or a reward that judges
        every pixel by returning no judged map)."""
        if judged is None or self.config.train.preserve_coef == 0:
            return None
        return heatmap_to_latent((~judged).float(), self.latent_shape[1:], self.config.advantage.interpolation)

    def loss(self, policy: Policy, batch: Batch, rows: torch.Tensor, steps: torch.Tensor) -> LossOutput:
        """The loss of the (sample ``rows[i]``, step ``steps[i]``) pairs [b], with gradients into ``policy``."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What a checkpoint keeps (the per-prompt statistics)."""
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])


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
from pxpo.algorithms import policy_gradient  # noqa: E402,F401

__all__ = ["Algorithm", "Batch", "algorithm_class", "available_algorithms", "register_algorithm"]
