"""Reward callables, the registry and the checks on what rewards return."""

import pytest
import torch

from pxpo.rewards import RewardError, available, check_heatmaps, load_reward
from pxpo.rewards.scalar import jpeg_size_kb


def test_blue_penalty_is_minus_the_blue_channel():
    images = torch.rand(2, 3, 16, 16)
    heatmaps = load_reward("blue_penalty")(images, ["x", "y"], [{}, {}])
    torch.testing.assert_close(heatmaps, -images[:, 2])


def test_colour_channel_sign_and_scale():
    images = torch.rand(2, 3, 16, 16)
    heatmaps = load_reward("colour_channel", channel="red", sign=1.0, scale=2.0)(images, ["x", "y"], [{}, {}])
    torch.testing.assert_close(heatmaps, 2 * images[:, 0])
    with pytest.raises(ValueError, match="'purple'"):
        load_reward("colour_channel", channel="purple")


def test_jpeg_rewards_are_constant_maps_that_prefer_flat_images():
    flat = torch.full((1, 3, 32, 32), 0.5)
    noisy = torch.rand(1, 3, 32, 32)
    images = torch.cat([flat, noisy])
    compress = load_reward("jpeg_compressibility")(images, ["a", "b"], [{}, {}])
    incompress = load_reward("jpeg_incompressibility")(images, ["a", "b"], [{}, {}])
    assert compress.shape == (2, 32, 32)
    assert torch.all(compress[0] == compress[0, 0]) and torch.all(compress[1] == compress[1, 0])
    torch.testing.assert_close(compress[:, 0, 0], -jpeg_size_kb(images))
    torch.testing.assert_close(incompress, -compress)
    assert compress[0, 0, 0] > compress[1, 0, 0]


def test_registry_and_module_paths():
    assert {"blue_penalty", "colour_channel", "jpeg_compressibility", "jpeg_incompressibility"} <= set(available())
    reward = load_reward("pxpo.rewards.colour:colour_channel", channel="green")
    images = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(reward(images, ["p"], [{}]), -images[:, 1])
    with pytest.raises(RewardError, match="not a registered reward"):
        load_reward("blue_penalti")
    with pytest.raises(RewardError, match="cannot import module 'no_such_module'"):
        load_reward("no_such_module:f")
    with pytest.raises(RewardError, match="has no callable 'nope'"):
        load_reward("pxpo.rewards.colour:nope")
    with pytest.raises(RewardError, match="unexpected keyword argument 'colour'"):
        load_reward("blue_penalty", colour="red")


def test_check_heatmaps_names_the_problem():
    images = torch.rand(2, 3, 8, 8)
    assert check_heatmaps(torch.zeros(2, 8, 8), images, "r").shape == (2, 8, 8)
    with pytest.raises(RewardError, match=r"reward 'r' returned shape \[2, 4, 4\]: expected \[2, 8, 8\]"):
        check_heatmaps(torch.zeros(2, 4, 4), images, "r")
    with pytest.raises(RewardError, match="returned ndarray"):
        check_heatmaps(torch.zeros(2, 8, 8).numpy(), images, "r")
    bad = torch.zeros(2, 8, 8)
    bad[1, 3, 3] = float("nan")
    with pytest.raises(RewardError, match=r"1 non-finite values \(e.g. nan\) in images \[1\]"):
        check_heatmaps(bad, images, "r")


def test_own_reward_module_in_the_current_folder_is_found(tmp_path, monkeypatch):
    import sys

    (tmp_path / "myreward_here.py").write_text(
        "def make(scale=1.0):\n    return lambda images, prompts, metadata: -scale * images[:, 0]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    reward = load_reward("myreward_here:make", scale=2.0)
    images = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(reward(images, ["a", "b"], [{}, {}]), -2.0 * images[:, 0])
    with pytest.raises(RewardError, match="cannot import module 'not_here_either'"):
        load_reward("not_here_either:make")


def test_weighted_reward_is_the_weighted_sum_and_keeps_each_term():
    from pxpo.rewards import weighted_reward

    reward = weighted_reward([{"name": "blue_penalty", "weight": 2.0}, {"name": "colour_channel", "weight": -0.5,
                              "kwargs": {"channel": "red", "sign": 1.0}, "label": "red"}])  # fmt: skip
    images = torch.rand(3, 3, 8, 8)
    output = reward(images, ["p"] * 3, [{}] * 3)
    torch.testing.assert_close(output.heatmaps, 2.0 * -images[:, 2] - 0.5 * images[:, 0])
    assert set(output.terms) == {"blue_penalty", "red"}
    torch.testing.assert_close(output.terms["red"], images[:, 0].mean(dim=(1, 2)))
    assert reward.name == "2 * blue_penalty + -0.5 * red"


@pytest.mark.slow  # trains
def test_weighted_rewards_train_exactly_as_their_weighted_map(make_config):
    """Two rewards with weights give the same update as one reward returning the weighted map."""
    from pxpo.models import trainable_state_dict
    from pxpo.trainer import Trainer
    from pxpo.world.architecture import build_tiny_pipeline

    terms = [{"name": "blue_penalty", "weight": 1.0}, {"name": "jpeg_compressibility", "weight": 0.05}]
    small = {"sample": {"num_steps": 3, "batch_size": 4}, "train": {"batch_size": 4}, "eval": {"seeds": [0]}}
    weighted = Trainer(make_config(**small, reward={"terms": terms}, run={"num_epochs": 1, "name": "terms"}),
                       pipeline=build_tiny_pipeline(0), progress=False)  # fmt: skip
    metrics = weighted.train()
    assert {"reward_term_blue_penalty", "reward_term_jpeg_compressibility"} <= set(metrics[1])
    blue, jpeg = load_reward("blue_penalty"), load_reward("jpeg_compressibility")

    def by_hand(images, prompts, metadata):
        return blue(images, prompts, metadata) + 0.05 * jpeg(images, prompts, metadata)

    single = Trainer(make_config(**small, run={"num_epochs": 1, "name": "by_hand"}), reward_fn=by_hand, pipeline=build_tiny_pipeline(0),
                     progress=False)  # fmt: skip
    single.train()
    a, b = trainable_state_dict(weighted.denoiser), trainable_state_dict(single.denoiser)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


def test_reward_terms_and_a_reward_name_together_are_refused():
    from pxpo.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match="give either reward.name \\(and kwargs\\) or reward.terms"):
        validate_config({"reward": {"name": "blue_penalty", "terms": [{"name": "blue_penalty"}]}})
    config = validate_config({"reward": {"terms": [{"name": "blue_penalty", "weight": 0.5}]}})
    import tomllib

    assert validate_config(tomllib.loads(config.to_toml())).reward.terms[0].weight == 0.5  # a saved run reloads
