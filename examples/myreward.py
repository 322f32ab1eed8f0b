"""A reward module of your own: `reward.name = "myreward:make"` finds it in the current folder.

    pxpo train configs/blue_penalty.toml --set reward.name='"myreward:make"' --set reward.kwargs='{strength = 2.0}'
"""

from collections.abc import Sequence

import torch


def make(strength: float = 1.0):
    """A factory: builds the reward once (load models here), returns the callable pxpo calls every epoch."""

    def reward(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        # images: [B, 3, H, W] float32 in [0, 1], on the training device; one prompt and one metadata dict per image
        red, green, blue = images[:, 0], images[:, 1], images[:, 2]
        warmth = red - blue  # [B, H, W]: positive where a pixel is warm
        return strength * warmth  # higher is better, per pixel

    return reward
