import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: steadier timings on shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from pxpo.config import validate_config  # noqa: E402
from pxpo.world.architecture import build_tiny_pipeline  # noqa: E402


@pytest.fixture
def tiny_pipe():
    """A fresh randomly initialised tiny SD-architecture pipeline (4 x 16 x 16 latents, 64 px)."""
    return build_tiny_pipeline(seed=0)


@pytest.fixture
def make_config(tmp_path):
    """A small, fast training config; keyword sections override it."""

    def make(**sections):
        data = {
            "sample": {"num_steps": 8, "batch_size": 8, "prompts": ["red taxi in traffic"]},
            "train": {"batch_size": 8, "learning_rate": 1e-2},
            "eval": {"seeds": [0, 1]},
            "run": {"num_epochs": 2, "output_dir": str(tmp_path / "runs"), "name": "test", "checkpoint_every": 1},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return validate_config(data)

    return make


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
