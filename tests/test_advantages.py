"""Heatmap -> latent grid, normalisation and per-prompt statistics against direct computations."""

import numpy as np
import pytest
import torch

from pxpo.advantages import PerPromptStatTracker, compute_advantages, heatmap_to_latent, normalize_batch


def test_area_downsampling_is_the_block_mean_and_keeps_the_mean():
    heatmap = torch.rand(3, 64, 64)
    latent = heatmap_to_latent(heatmap, 16)
    assert latent.shape == (3, 1, 16, 16)
    blocks = heatmap.reshape(3, 16, 4, 16, 4).mean(dim=(2, 4))
    torch.testing.assert_close(latent[:, 0], blocks)
    torch.testing.assert_close(latent.mean(dim=(1, 2, 3)), heatmap.mean(dim=(1, 2)))


def test_bilinear_option_and_bad_mode():
    heatmap = torch.zeros(2, 64, 48)
    heatmap[:, :32] = 1.0
    latent = heatmap_to_latent(heatmap, (16, 12), mode="bilinear")
    assert latent.shape == (2, 1, 16, 12)
    assert latent[:, :, :6].min() > 0.99 and latent[:, :, 10:].max() < 0.01
    with pytest.raises(ValueError, match="'nearest'"):
        heatmap_to_latent(heatmap, 16, mode="nearest")


def test_batch_normalisation_over_all_pixels_of_all_images():
    rewards = torch.randn(4, 1, 16, 16) * 3 + 2
    advantages = normalize_batch(rewards)
    flat = rewards.numpy().ravel()
    expected = (flat - flat.mean()) / flat.std()
    np.testing.assert_allclose(advantages.numpy().ravel(), expected, rtol=1e-4, atol=1e-5)


def test_zero_variance_gives_zero_advantages_and_a_warning():
    with pytest.warns(UserWarning, match="zero variance"):
        advantages = normalize_batch(torch.full((4, 1, 8, 8), -0.3))
    assert torch.equal(advantages, torch.zeros(4, 1, 8, 8))
    tracker = PerPromptStatTracker(buffer_size=8, min_count=1)
    with pytest.warns(UserWarning, match="zero variance"):
        advantages = tracker.update(["a", "a"], torch.tensor([1.0, 1.0]))
    assert torch.equal(advantages, torch.zeros(2))


def test_per_prompt_scalar_statistics_match_a_reference_buffer():
    """Against a plain re-implementation of DDPO's per-prompt stat tracker with numpy."""
    rng = np.random.default_rng(0)
    tracker = PerPromptStatTracker(buffer_size=5, min_count=3)
    buffers: dict[str, list[float]] = {}
    for _ in range(4):
        prompts = list(rng.choice(["cat", "dog"], size=4))
        rewards = rng.normal(size=4)
        ours = tracker.update(prompts, torch.tensor(rewards, dtype=torch.float32)).numpy()
        expected = np.empty(4)
        for prompt in set(prompts):
            buffers[prompt] = (buffers.get(prompt, []) + [r for p, r in zip(prompts, rewards) if p == prompt])[-5:]
            values = np.array(buffers[prompt]) if len(buffers[prompt]) >= 3 else rewards
            rows = np.array(prompts) == prompt
            expected[rows] = (rewards[rows] - values.mean()) / values.std()
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_per_prompt_map_statistics_pool_all_elements():
    tracker = PerPromptStatTracker(buffer_size=10, min_count=1)
    first, second = torch.rand(2, 1, 4, 4), torch.rand(3, 1, 4, 4) * 2
    tracker.update(["p"] * 2, first)
    advantages = tracker.update(["p"] * 3, second)
    pooled = torch.cat([first, second]).numpy().ravel()
    expected = (second.numpy() - pooled.mean()) / pooled.std()
    np.testing.assert_allclose(advantages.numpy(), expected, rtol=1e-4, atol=1e-5)
    restored = PerPromptStatTracker(buffer_size=10, min_count=1)
    restored.load_state_dict(tracker.state_dict())
    assert restored.state_dict() == tracker.state_dict()


def test_compute_advantages_clips_and_passes_through():
    rewards = torch.tensor([0.0, 0.0, 0.0, 10.0])
    assert compute_advantages(rewards, ["a"] * 4, "none", clip_max=5.0).max() == 5.0
    assert compute_advantages(rewards, ["a"] * 4, "batch", clip_max=1.0).max() == 1.0
    with pytest.raises(ValueError, match="'global'"):
        compute_advantages(rewards, ["a"] * 4, "global", clip_max=None)


def test_group_normalisation_standardises_each_group_of_consecutive_samples():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, -2.0, 4.0])  # three groups of two
    advantages = compute_advantages(rewards, ["a"] * 6, "group", None, group_size=2)
    torch.testing.assert_close(advantages, torch.tensor([-1.0, 1.0, 0.0, 0.0, -1.0, 1.0]))  # a constant group gives zeros


def test_group_normalisation_of_maps_pools_the_groups_elements():
    torch.manual_seed(0)
    maps = torch.randn(4, 1, 3, 3)
    advantages = compute_advantages(maps, ["a"] * 4, "group", None, group_size=2)
    for g in range(2):
        block = maps[2 * g : 2 * g + 2]
        torch.testing.assert_close(advantages[2 * g : 2 * g + 2], (block - block.mean()) / block.std(unbiased=False))


def test_group_location_normalisation_standardises_each_location_within_its_group():
    torch.manual_seed(0)
    maps = torch.randn(6, 1, 4, 4)
    maps[0:3, :, 0, 0] = 7.0  # one location is the same in every image of the first group
    advantages = compute_advantages(maps, ["a"] * 6, "group_location", None, group_size=3)
    for g in range(2):
        block = maps[3 * g : 3 * g + 3]
        mean, std = block.mean(dim=0, keepdim=True), block.std(dim=0, keepdim=True, unbiased=False)
        expected = torch.where(std < 1e-6, torch.zeros_like(block), (block - mean) / std)
        torch.testing.assert_close(advantages[3 * g : 3 * g + 3], expected)
    assert torch.all(advantages[0:3, :, 0, 0] == 0)
    # scalar rewards: per location is per image
    scalars = torch.tensor([1.0, 2.0, 4.0, 0.0])
    torch.testing.assert_close(compute_advantages(scalars, ["a"] * 4, "group_location", None, group_size=2),
                               compute_advantages(scalars, ["a"] * 4, "group", None, group_size=2))  # fmt: skip


def test_groups_must_divide_the_batch():
    with pytest.raises(ValueError, match="5 samples cannot be split into groups of 2"):
        compute_advantages(torch.randn(5), ["a"] * 5, "group", None, group_size=2)


def test_heatmap_that_does_not_fit_the_latent_grid_is_refused():
    with pytest.raises(ValueError, match="heatmap of 60 x 64 pixels cannot be area-averaged onto the 16 x 16 latent grid"):
        heatmap_to_latent(torch.zeros(1, 60, 64), 16)
    assert heatmap_to_latent(torch.zeros(1, 60, 64), 16, mode="bilinear").shape == (1, 1, 16, 16)
