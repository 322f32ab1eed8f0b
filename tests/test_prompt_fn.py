"""prompt_fn: each group's prompt and metadata drawn by your function, its metadata reaching the reward."""

import pytest
import torch

from pxpo.trainer import Trainer
from pxpo.world.architecture import build_tiny_pipeline

pytestmark = pytest.mark.slow  # builds and trains Trainers

PROMPTS = ["red taxi in traffic", "nature landscape", "portrait of a man on the beach"]


def test_prompt_fn_draws_each_groups_prompt_and_its_metadata_reaches_the_reward(make_config):
    seen = []

    def prompts(generator):
        i = int(torch.randint(3, (1,), generator=generator))
        return PROMPTS[i], {"index": i}

    def reward(images, prompts, metadata):
        seen.append(list(zip(prompts, metadata)))
        return -images[:, 2]

    records = []
    config = make_config(sample={"num_steps": 2, "batch_size": 4, "group_size": 2}, train={"batch_size": 4}, run={"num_epochs": 2})
    trainer = Trainer(config, reward_fn=reward, pipeline=build_tiny_pipeline(0), progress=False, prompt_fn=prompts,
                      callbacks=[lambda t, record: records.append((t, record["epoch"]))])  # fmt: skip
    trainer.train()
    training_calls = [call for call in seen if "index" in call[0][1]]  # (evaluation calls carry a seed instead)
    assert len(training_calls) == 2
    for call in training_calls:
        assert call[0][0] == call[1][0] and call[2][0] == call[3][0]  # groups of 2 share their prompt
        for prompt, meta in call:
            assert PROMPTS[meta["index"]] == prompt
            assert meta["epoch"] in (1, 2)
    assert records == [(trainer, 0), (trainer, 1), (trainer, 2)]  # plain functions are epoch-end callbacks


def test_a_bad_prompt_fn_is_named(make_config):
    trainer = Trainer(make_config(), pipeline=build_tiny_pipeline(0), progress=False, prompt_fn=lambda g: ("", {}))
    with pytest.raises(ValueError, match="prompt_fn returned \\(''"):
        trainer.sample(1)
