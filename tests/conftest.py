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


@pytest.fixture
def quick_toml(tmp_path):
    """Write a small config file for command-line runs (tiny-random, 3 steps, 2 images, runs in tmp_path/runs).

    ``quick_toml(name, run={"num_epochs": 4})``: keyword sections override the defaults; returns the path as a str.
    """
    import tomli_w

    def write(name: str, **sections) -> str:
        data = {
            "model": {"pretrained": "tiny-random"},
            "sample": {"num_steps": 3, "batch_size": 2},
            "train": {"batch_size": 2, "learning_rate": 1e-2},
            "eval": {"seeds": [0]},
            "run": {"num_epochs": 2, "output_dir": str(tmp_path / "runs"), "name": name},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(data))
        return str(path)

    return write
