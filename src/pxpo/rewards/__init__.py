"""Heatmap rewards: plain callables ``fn(images, prompts, metadata) -> heatmaps``.

- images: [B, 3, H, W] float in [0, 1]
- prompts: list of B strings
- metadata: list of B dicts (e.g. the sample's seed and prompt)
- returns: [B, H, W] float pixel rewards (higher is better)

A reward is built by a factory, ``factory(**kwargs) -> fn``, found by name in the registry
(``pxpo.rewards.available()``) or by a ``"package.module:factory"`` path for your own.
A scalar reward (one number per image) becomes a constant map with ``scalar_as_heatmap``.
"""

from pxpo.rewards.registry import (
    RewardError,
    RewardFn,
    RewardOutput,
    available,
    check_heatmaps,
    check_reward_output,
    injected_reward_name,
    load_reward,
    record_injected_reward,
    register_reward,
)
from pxpo.rewards.colour import colour_channel
from pxpo.rewards.scalar import jpeg_compressibility, jpeg_incompressibility, scalar_as_heatmap
from pxpo.rewards.segmentation import class_probabilities, segmentation
from pxpo.rewards.human import folder_feedback, painted, simulated_annotator
from pxpo.rewards.weighted import WeightedReward, build_reward, weighted_reward
from pxpo.rewards.remote import http_reward

__all__ = [
    "RewardError",
    "RewardFn",
    "RewardOutput",
    "available",
    "check_heatmaps",
    "check_reward_output",
    "class_probabilities",
    "colour_channel",
    "folder_feedback",
    "painted",
    "jpeg_compressibility",
    "jpeg_incompressibility",
    "load_reward",
    "record_injected_reward",
    "register_reward",
    "scalar_as_heatmap",
    "segmentation",
    "simulated_annotator",
    "WeightedReward",
    "build_reward",
    "injected_reward_name",
    "http_reward",
    "weighted_reward",
]
