"""SDE windows: which denoising steps of each sample are the policy's stochastic (and trained) steps.

``sample.sde_window = [start, end]`` makes steps start..end-1 stochastic and every other step the sampler's
deterministic one (MixGRPO, TempFlow-GRPO, Flow-GRPO-Fast); ``sample.sde_window_schedule`` moves the window:

- ``fixed``: at [start, end] every epoch;
- ``random``: a position drawn per group each epoch (one generator per epoch, not per process, so a group spread
  over processes shares its window);
- ``sliding``: MixGRPO's window, one step later every ``sample.sde_window_shift_every`` epochs, back to step 0
  after the last position.

Evaluation images use the window at [start, end] (epoch None), so they stay comparable between epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from pxpo.schedule import epoch_seed

if TYPE_CHECKING:
    from pxpo.config import Config


def sde_window_starts(config: Config, epoch: int | None, groups: Sequence[int]) -> tuple[torch.Tensor, int] | None:
    """Each sample's window (starts [B] long, length K) for ``rollout.sample_trajectories``; None without a window.

    Args:
        config: the run's config.
        epoch: the training epoch, or None for evaluation (the window at its configured place).
        groups: each sample's group index (samples of one group share a random window).
    """
    window = config.sample.sde_window
    if window is None:
        return None
    start, length = window[0], window[1] - window[0]
    positions = config.policy_steps - length + 1  # the places a window of K steps can start (CPS: not over the last step)
    schedule = config.sample.sde_window_schedule
    if epoch is None or schedule == "fixed":
        starts = torch.full((len(groups),), start)
    elif schedule == "sliding":
        starts = torch.full((len(groups),), (start + (epoch - 1) // config.sample.sde_window_shift_every) % positions)
    else:
        generator = torch.Generator().manual_seed(epoch_seed(config.run.seed, epoch, "sde_window"))
        table = torch.randint(positions, (max(groups) + 1,), generator=generator)
        starts = table[torch.as_tensor(list(groups))]
    return starts.long(), length
