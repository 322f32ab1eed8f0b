"""Colour-channel rewards: the paper's first experiment (penalise blue)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pxpo.rewards.registry import RewardFn, RewardOutput, register_reward

CHANNELS = {"red": 0, "green": 1, "blue": 2}


@register_reward("colour_channel")
def colour_channel(
    channel: str = "blue", sign: float = -1.0, scale: float = 1.0, classes: Sequence[str] | None = None, model: str = "pxpo-tiny-seg"
) -> RewardFn:
    """Pixel reward = sign * scale * the channel's value in [0, 1]; it judges every pixel.

    With ``classes``, only on the pixels a segmenter assigns to those classes (0 elsewhere), and it judges those
    pixels only: e.g. less blue on the water, and no opinion on the rest of the landscape.

    Args:
        channel: "red", "green" or "blue".
        sign: +1 to reward the channel, -1 to penalise it.
        scale: multiplies the reward.
        classes: class names of ``model`` (e.g. ["water"]); None: the whole image.
        model: the segmenter that finds ``classes``.
    """
    if channel not in CHANNELS:
        raise ValueError(f"channel = {channel!r}: expected one of {sorted(CHANNELS)}")
    index, factor = CHANNELS[channel], float(sign) * float(scale)
    if classes is None:

        def reward(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
            return factor * images[:, index].float()

        return reward
    from pxpo.models import load_segmenter
    from pxpo.rewards.segmentation import class_probabilities, resolve_classes

    segmenter, processor = load_segmenter(model)
    targets = resolve_classes(segmenter.config.id2label, dict.fromkeys(classes, 1.0), model).ne(0)

    def on_classes(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        segmenter.to(images.device)
        judged = targets.to(images.device)[class_probabilities(segmenter, processor, images).argmax(dim=1)]
        return RewardOutput(factor * images[:, index].float() * judged, judged=judged)

    return on_classes


@register_reward("blue_penalty")
def blue_penalty(scale: float = 1.0) -> RewardFn:
    """The paper's colour experiment: pixel reward = -scale * blue channel."""
    return colour_channel("blue", sign=-1.0, scale=scale)
