"""From rewards to advantages: heatmap -> latent grid, normalisation, clipping.

PXPO's rewards are heatmaps in pixel space [B, H, W]; its log-probabilities live on the latent grid
[B, C, h, w]. The heatmap is downsampled to [B, 1, h, w] (area averaging by default: it keeps each
image's mean, so the pixel-mean reward that DDPO would see is unchanged) and broadcast over
channels in the loss. DDPO's reward is the pixel mean of the same heatmap, one number per image.

Normalisation turns rewards into advantages. The statistics of a map are those of all its
elements: "batch" standardises over every element of every image (the paper's "standardised
across all images"); "per_prompt" keeps a buffer of recent images per prompt (DDPO's per-prompt
statistics) and falls back to the batch's statistics until a prompt has ``min_count`` images.

GRPO's groups: with ``sample.group_size = k`` every sample carries a group id (``pxpo.schedule``: k samples of
one prompt, which may lie in different sampling batches and on different processes). "group" standardises
within each group (a scalar reward per image; a map over all the group's elements); "group_location"
standardises each latent location within its group (the dense variant of DenseFlow-GRPO): a location whose
reward is the same in every image of its group gets advantage 0. The statistics are computed on all
processes' rewards gathered in their global order, grouped by id, so the advantages do not depend on where
a group's samples were drawn. Without ids, consecutive rows of k form the groups.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Normalization = Literal["none", "batch", "per_prompt", "group", "group_location"]
InterpolationMode = Literal["area", "bilinear"]

_MIN_STD = 1e-6  # below this a batch is constant (float32 rounding of a constant map gives ~1e-8)


def heatmap_to_latent(
    heatmap: torch.Tensor, latent_size: int | tuple[int, int], mode: InterpolationMode = "area"
) -> torch.Tensor:
    """Downsample pixel heatmaps to the latent grid.

    Args:
        heatmap: [B, H, W] pixel rewards.
        latent_size: h or (h, w), the latent grid.
        mode: "area" (averages each cell's pixels; keeps the mean when H, W are multiples of h, w)
            or "bilinear" (antialiased bilinear resampling).

    Returns:
        [B, 1, h, w] float32 rewards on the latent grid.
    """
    if heatmap.ndim != 3:
        raise ValueError(f"heatmap of shape {tuple(heatmap.shape)}: expected [B, H, W]")
    size = (latent_size, latent_size) if isinstance(latent_size, int) else tuple(latent_size)
    if mode == "area" and (heatmap.shape[1] % size[0] or heatmap.shape[2] % size[1]):
        raise ValueError(
            f"heatmap of {heatmap.shape[1]} x {heatmap.shape[2]} pixels cannot be area-averaged onto the {size[0]} x {size[1]} "
            "latent grid: its sides must be multiples of the grid's (or use advantage.interpolation = 'bilinear')"
        )
    maps = heatmap.float().unsqueeze(1)
    if mode == "area":
        return F.interpolate(maps, size=size, mode="area")
    if mode == "bilinear":
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False, antialias=True)
    raise ValueError(f"interpolation mode = {mode!r}: expected 'area' or 'bilinear'")


def _standardise(rewards: torch.Tensor, mean: torch.Tensor | float, std: torch.Tensor | float, what: str) -> torch.Tensor:
    if float(std) < _MIN_STD:
        warnings.warn(f"{what}: the rewards have zero variance, so the advantages are zero", stacklevel=3)
        return torch.zeros_like(rewards)
    return (rewards - mean) / std


def normalize_batch(rewards: torch.Tensor) -> torch.Tensor:
    """Standardise over every element of the batch: [B, ...] -> [B, ...] with mean 0 and std 1.

    A batch with zero variance gives zero advantages and a warning.
    """
    rewards = rewards.float()
    return _standardise(rewards, rewards.mean(), rewards.std(unbiased=False), "batch normalisation")


def consecutive_groups(num_samples: int, group_size: int) -> torch.Tensor:
    """Group ids [B] of consecutive groups of ``group_size`` rows: [0, .., 0, 1, .., 1, ...]."""
    if group_size < 1 or num_samples % group_size:
        raise ValueError(f"{num_samples} samples cannot be split into groups of {group_size}")
    return torch.arange(num_samples) // group_size


def normalize_groups(rewards: torch.Tensor, groups: torch.Tensor, group_size: int, per_location: bool = False) -> torch.Tensor:
    """Standardise within each group of samples that share a group id.

    Args:
        rewards: [B] scalar rewards or [B, ...] reward maps.
        groups: [B] integer group ids; the rows of a group may be anywhere in the batch.
        group_size: k, the samples every group must have.
        per_location: standardise each element position separately over the group's k samples
            (for maps); otherwise over all of the group's elements.

    Returns:
        Advantages of the same shape, row for row. A group (or a location) with zero variance gets zeros.
    """
    b = rewards.shape[0]
    groups = torch.as_tensor(groups).reshape(-1).to(rewards.device)
    if groups.shape[0] != b:
        raise ValueError(f"{groups.shape[0]} group ids for {b} samples")
    ids, counts = torch.unique(groups, return_counts=True)
    if bool((counts != group_size).any()):
        bad = int((counts != group_size).nonzero()[0, 0])
        raise ValueError(f"group {int(ids[bad])} has {int(counts[bad])} samples: every group needs sample.group_size = {group_size}")
    order = torch.argsort(groups, stable=True)  # each group's rows together, in their own order (consecutive groups: unmoved)
    grouped = rewards.float()[order].reshape(len(ids), group_size, -1)  # [G, k, E]
    dims = (1,) if per_location else (1, 2)
    mean = grouped.mean(dim=dims, keepdim=True)
    std = grouped.std(dim=dims, keepdim=True, unbiased=False)
    standardised = torch.where(std < _MIN_STD, torch.zeros_like(grouped), (grouped - mean) / std.clamp(min=_MIN_STD))
    advantages = torch.empty_like(standardised.reshape(b, -1))
    advantages[order] = standardised.reshape(b, -1)
    return advantages.reshape(rewards.shape)


class PerPromptStatTracker:
    """Per-prompt reward statistics over a buffer of recent images (DDPO's per-prompt normalisation).

    Each image contributes the mean and mean square of its reward elements (one number for a
    scalar reward, h * w numbers for a map); a prompt's mean and std pool its buffered images.
    Until a prompt has ``min_count`` images buffered, the current batch's statistics are used.
    """

    def __init__(self, buffer_size: int, min_count: int) -> None:
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size = {buffer_size}, min_count = {min_count}: both must be >= 1")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.buffers: dict[str, deque[tuple[float, float]]] = {}

    def update(self, prompts: Sequence[str], rewards: torch.Tensor) -> torch.Tensor:
        """Add the batch to the buffers and return its advantages.

        Args:
            prompts: B prompts.
            rewards: [B] scalar rewards or [B, ...] reward maps.

        Returns:
            Advantages of the same shape as ``rewards``.
        """
        if len(prompts) != rewards.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {rewards.shape[0]} rewards")
        rewards = rewards.float()
        flat = rewards.reshape(len(prompts), -1)
        for prompt, first, second in zip(prompts, flat.mean(1).tolist(), (flat**2).mean(1).tolist()):
            self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size)).append((first, second))
        advantages = torch.empty_like(rewards)
        for prompt in dict.fromkeys(prompts):
            rows = torch.tensor([p == prompt for p in prompts], device=rewards.device)
            buffer = self.buffers[prompt]
            if len(buffer) < self.min_count:
                mean, std = rewards.mean(), rewards.std(unbiased=False)
            else:
                mean = sum(m for m, _ in buffer) / len(buffer)
                second = sum(s for _, s in buffer) / len(buffer)
                std = max(second - mean**2, 0.0) ** 0.5
            advantages[rows] = _standardise(rewards[rows], mean, std, f"prompt {prompt!r}")
        return advantages

    def state_dict(self) -> dict:
        """JSON-serialisable state, for checkpoints."""
        return {prompt: [list(item) for item in buffer] for prompt, buffer in self.buffers.items()}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {
            prompt: deque((tuple(item) for item in items), maxlen=self.buffer_size) for prompt, items in state.items()
        }


def compute_advantages(
    rewards: torch.Tensor,
    prompts: Sequence[str],
    normalization: Normalization,
    clip_max: float | None,
    tracker: PerPromptStatTracker | None = None,
    group_size: int = 1,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalise rewards ([B] or [B, 1, h, w]) into advantages of the same shape, then clip to +-clip_max.

    The "group" and "group_location" normalisations standardise within groups of ``group_size`` samples: those
    sharing an id in ``groups`` [B] (from the sample schedule), or, without ids, consecutive rows.
    """
    if normalization == "none":
        advantages = rewards.float()
    elif normalization == "batch":
        advantages = normalize_batch(rewards)
    elif normalization == "per_prompt":
        if tracker is None:
            raise ValueError("per_prompt normalisation needs a PerPromptStatTracker")
        advantages = tracker.update(prompts, rewards)
    elif normalization in ("group", "group_location"):
        ids = groups if groups is not None else consecutive_groups(rewards.shape[0], group_size)
        advantages = normalize_groups(rewards, ids, group_size, per_location=normalization == "group_location")
    else:
        raise ValueError(f"normalization = {normalization!r}: expected 'none', 'batch', 'per_prompt', 'group' or 'group_location'")
    if clip_max is not None:
        advantages = advantages.clamp(-clip_max, clip_max)
    return advantages
