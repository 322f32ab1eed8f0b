"""Scalar (per-image) rewards as constant heatmaps, so DDPO and PXPO can run on the same task."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from pxpo.images import to_uint8
from pxpo.rewards.registry import RewardFn, register_reward

ScalarFn = Callable[[torch.Tensor, Sequence[str], Sequence[dict]], torch.Tensor]


def scalar_as_heatmap(fn: ScalarFn) -> RewardFn:
    """Wrap a scalar reward ``fn(images, prompts, metadata) -> [B]`` into a constant map [B, H, W]."""

    def reward(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        values = torch.as_tensor(fn(images, prompts, metadata), dtype=torch.float32, device=images.device)
        return values.reshape(-1, 1, 1).expand(-1, images.shape[2], images.shape[3]).clone()

    return reward


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Size of each image [B, 3, H, W] in [0, 1] saved as JPEG, in kilobytes: [B]."""
    arrays = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


@register_reward("jpeg_compressibility")
def jpeg_compressibility(quality: int = 95) -> RewardFn:
    """DDPO's compressibility: reward = -JPEG size in kB, the same for every pixel."""
    return scalar_as_heatmap(lambda images, prompts, metadata: -jpeg_size_kb(images, quality))


@register_reward("jpeg_incompressibility")
def jpeg_incompressibility(quality: int = 95) -> RewardFn:
    """DDPO's incompressibility: reward = +JPEG size in kB, the same for every pixel."""
    return scalar_as_heatmap(lambda images, prompts, metadata: jpeg_size_kb(images, quality))
