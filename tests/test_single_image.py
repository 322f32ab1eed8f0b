"""Single-image mode (human feedback): painted feedback reaches the latent cells under it. (The app's own tests, in
test_app.py, cover the image shown and trained, and an all-zero map.)"""

import numpy as np
import pytest
import torch

from pxpo.trainer import Trainer

pytestmark = pytest.mark.slow  # builds a Trainer


def test_painted_signs_reach_the_latent_cells_under_them(tmp_path):
    """The human-feedback path, mechanism only: + and - strokes become advantages of the same sign on exactly
    the latent cells they cover (single-image mode, no normalisation: the values themselves), zero elsewhere.
    The outcome over run seeds is a benchmark: docs/benchmarks/two_objectives_seeds.md."""
    from pxpo.app.sessions import session_config

    values = np.zeros((64, 64), np.float32)
    values[0:16, 0:16] = 2.0  # latent cells [0:4, 0:4]
    values[40:64, 32:64] = -2.0  # latent cells [10:16, 8:16]
    trainer = Trainer(session_config("tiny-random", "nature landscape", 3, tmp_path / "s"), progress=False)
    trajectories = trainer.sample(1)
    heatmaps = trainer.reward(trajectories.images, trajectories.prompts, [{"painted": values}]).heatmaps
    advantages = trainer.advantages(heatmaps, trajectories.prompts)[0, 0]
    assert advantages.shape == (16, 16)
    assert torch.all(advantages[0:4, 0:4] == 2) and torch.all(advantages[10:16, 8:16] == -2)
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[0:4, 0:4] = outside[10:16, 8:16] = False
    assert torch.all(advantages[outside] == 0)
