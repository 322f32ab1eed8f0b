"""A run's randomness follows run.seed, not the process's global state: every process of a run starts alike."""

import pytest
import torch

from pxpo.models import trainable_state_dict
from pxpo.trainer import Trainer
from pxpo.world.architecture import build_tiny_pipeline

pytestmark = pytest.mark.slow  # builds Trainers


def test_lora_initialisation_follows_run_seed_not_global_state(make_config):
    """Two processes with the same config start from the same LoRA (its A matrices are random)."""

    def lora(name, seed):
        pipe = build_tiny_pipeline(0)  # (seeds the global RNG itself)
        torch.manual_seed(1234 + seed + len(name))  # another process's global RNG
        state = torch.random.get_rng_state()
        trainer = Trainer(make_config(run={"name": name, "seed": seed}), pipeline=pipe, progress=False)
        assert torch.equal(state, torch.random.get_rng_state())  # the trainer leaves the global RNG alone
        return trainable_state_dict(trainer.accelerator.unwrap_model(trainer.denoiser))

    first, again, other = lora("a", seed=0), lora("bb", seed=0), lora("c", seed=1)
    assert first.keys() == again.keys() and len(first) > 0
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)
