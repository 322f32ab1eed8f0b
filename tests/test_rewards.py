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
