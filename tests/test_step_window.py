"""train.step_window: the LoRA acts, and is trained, on a window of denoising steps only; the base model elsewhere."""

import pytest
import torch

from pxpo.config import ConfigError, validate_config
from pxpo.schedule import training_batches


def _config(**train):
    return validate_config({"sample": {"num_steps": 10, "batch_size": 4}, "train": {"batch_size": 2, **train}})


def test_only_the_windows_steps_are_trained():
    config = _config(step_window=[6, 10], num_inner_epochs=2)
    calls = list(training_batches(4, config, torch.Generator().manual_seed(0)))
    steps = torch.cat([call.steps for call in calls])
    assert set(steps.tolist()) == {6, 7, 8, 9}
    assert len(steps) == 2 * 4 * 4  # inner epochs x samples x window steps: every (sample, step) pair once per inner epoch
    assert all(call.num_steps == 1 and call.weight == pytest.approx(1.0) for call in calls)  # one window step per call, equal shares


def test_a_window_of_every_step_is_the_same_order_as_no_window():
    plain = list(training_batches(4, _config(), torch.Generator().manual_seed(3)))
    whole = list(training_batches(4, _config(step_window=[0, 10]), torch.Generator().manual_seed(3)))
    assert all(torch.equal(a.steps, b.steps) and torch.equal(a.rows, b.rows) for a, b in zip(plain, whole))


@pytest.mark.parametrize("window", [[5, 5], [-1, 4], [3, 11], [1, 2, 3]])
def test_a_window_out_of_range_is_refused(window):
    with pytest.raises(ConfigError, match=r"train.step_window = .*: expected \[start, end\] with 0 <= start < end <= sample.num_steps = 10"):
        _config(step_window=window)


def test_a_window_needs_lora():
    with pytest.raises(ConfigError, match=r"train.step_window = \[5, 10\] needs model.lora = true"):
        validate_config({"model": {"lora": False}, "sample": {"num_steps": 10}, "train": {"step_window": [5, 10]}})


@pytest.mark.slow
def test_outside_the_window_the_sampler_runs_the_base_model(make_config):
    """After training, the trajectory's steps before the window are the base model's, bit for bit; inside it they differ."""
    from pxpo.rollout import sample_trajectories
    from pxpo.trainer import Trainer

    config = make_config(model={"pretrained": "tiny-random"}, sample={"num_steps": 6, "batch_size": 2, "eta": 0.5},
                         train={"batch_size": 2, "learning_rate": 5e-2, "step_window": [3, 6]}, eval={"seeds": [0]})  # fmt: skip
    trainer = Trainer(config, progress=False)
    trainer.step(1)

    def trajectory(adapter_steps):
        return sample_trajectories(trainer.family, ["red taxi in traffic"], num_steps=6, guidance_scale=5.0, noise_level=0.5,
                                   generator=torch.Generator().manual_seed(1), adapter_steps=adapter_steps)  # fmt: skip

    windowed, base = trajectory((3, 6)), trajectory((0, 0))
    torch.testing.assert_close(windowed.latents[:, :4], base.latents[:, :4], rtol=0, atol=0)  # x_T and steps 0-2
    assert not torch.equal(windowed.latents[:, 4:], base.latents[:, 4:])
