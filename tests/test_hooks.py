"""Callbacks (``pxpo.hooks``): code of yours around each phase of the trainer, and at each epoch's end."""

import pytest
import torch

from pxpo.hooks import PHASES, Callbacks
from pxpo.sampling import Trajectories
from pxpo.trainer import Trainer
from pxpo.world.architecture import build_tiny_pipeline


@pytest.mark.slow  # trains
def test_callbacks_see_every_phase_in_order_with_its_result(make_config, phases):
    config = make_config(sample={"num_steps": 2, "batch_size": 2}, train={"batch_size": 2}, eval={"seeds": [0, 1, 2]}, run={"num_epochs": 1})
    trainer = Trainer(config, pipeline=build_tiny_pipeline(0), progress=False, callbacks=[phases])
    metrics = trainer.train()
    expected = [("begin", "evaluate", 0), ("end", "evaluate", 0)]  # the base model, as epoch 0
    for phase in PHASES:
        expected += [("begin", phase, 1), ("end", phase, 1)]
    assert phases.events == expected
    trajectories = phases.results["sample", 1]
    assert isinstance(trajectories, Trajectories) and len(trajectories) == 2 and trajectories.images.shape == (2, 3, 64, 64)
    torch.testing.assert_close(phases.results["reward", 1].heatmaps, -trajectories.images[:, 2])  # the default blue penalty
    assert phases.results["advantage", 1].shape == (2, 1, 16, 16)
    assert phases.results["update", 1]["loss"] == metrics[1]["loss"]
    assert phases.results["evaluate", 1]["eval_reward_mean"] == metrics[1]["eval_reward_mean"]
    assert [record["epoch"] for record in phases.records] == [0, 1] and phases.records == metrics


def test_a_callback_that_is_neither_a_callback_nor_a_function_is_refused():
    with pytest.raises(TypeError, match="expected a pxpo.hooks.Callback or a function fn\\(trainer, record\\)"):
        Callbacks([object()])
