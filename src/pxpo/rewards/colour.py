"""Colour-channel rewards: the paper's first experiment (penalise blue)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pxpo.rewards.registry import RewardFn, register_reward

CHANNELS = {"red": 0, "green": 1, "blue": 2}


@register_reward("colour_channel")
def colour_channel(channel: str = "blue", sign: float = -1.0, scale: float = 1.0) -> RewardFn:
    """Pixel reward = sign * scale * the channel's value in [0, 1].

    Args:
        channel: "red", "green" or "blue".
        sign: +1 to reward the channel, -1 to penalise it.
        scale: multiplies the reward.
    """
    if channel not in CHANNELS:
        raise ValueError(f"channel = {channel!r}: expected one of {sorted(CHANNELS)}")
    index, factor = CHANNELS[channel], float(sign) * float(scale)

    def reward(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        return factor * images[:, index].float()

    return reward


@register_reward("blue_penalty")
def blue_penalty(scale: float = 1.0) -> RewardFn:
    """The paper's colour experiment: pixel reward = -scale * blue channel."""
    return colour_channel("blue", sign=-1.0, scale=scale)
