"""Feedback that stays where it was given: rewards say which pixels they judge, and the preservation term keeps the
rest. Mechanism tests (the outcome is measured by benchmarks/locality.py)."""

import numpy as np
import pytest
import torch

from pxpo.algorithms import algorithm_class
from pxpo.config import ConfigError, validate_config
from pxpo.losses import gaussian_kl, preservation, trust_region
from pxpo.rewards import RewardError, RewardOutput, check_reward_output, load_reward, weighted_reward


def _config(**train):
    return validate_config({"train": {"preserve_coef": 1.0, **train}})


def test_the_term_is_exactly_zero_where_everything_was_judged():
    log_prob, old = torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 4, 8, 8)
    term = preservation(trust_region(log_prob, old), torch.zeros(2, 1, 8, 8))
    term.backward()
    assert term.item() == 0.0 and torch.count_nonzero(log_prob.grad) == 0


def test_the_term_is_zero_with_zero_gradient_where_the_policy_equals_its_reference():
    mean = torch.randn(2, 4, 8, 8, requires_grad=True)
    keep = torch.rand(2, 1, 8, 8)
    kl = preservation(gaussian_kl(mean, mean.detach().clone(), torch.full((2, 1, 1, 1), 0.3)), keep)
    kl.backward()
    assert kl.item() == 0.0 and torch.count_nonzero(mean.grad) == 0
    log_prob = torch.randn(2, 4, 8, 8, requires_grad=True)  # the trust region at ratio 1: the first, on-policy step
    region = preservation(trust_region(log_prob, log_prob.detach().clone()), keep)
    region.backward()
    assert region.item() == 0.0 and torch.count_nonzero(log_prob.grad) == 0


def test_its_gradient_comes_only_from_unjudged_locations():
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., 2:5, 3:7] = 1.0
    mean = torch.randn(1, 4, 8, 8, requires_grad=True)
    preservation(gaussian_kl(mean, torch.randn(1, 4, 8, 8), torch.full((1, 1, 1, 1), 0.5)), keep).backward()
    touched = mean.grad.abs().sum(dim=1, keepdim=True) > 0
    assert torch.equal(touched, keep.bool())


def test_the_kl_equals_torch_distributions_per_element():
    mean, reference, std = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.full((2, 1, 1, 1), 0.7)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std.expand_as(mean)),
                                                 torch.distributions.Normal(reference, std.expand_as(mean)))  # fmt: skip
    torch.testing.assert_close(gaussian_kl(mean, reference, std), expected)


@pytest.mark.parametrize("latent_shape,size", [((4, 16, 16), 64), ((4, 8, 8), 64), ((16, 4, 4), 32)], ids=["sd", "flux", "coarse"])
def test_a_judged_map_reaches_the_latent_grid_aligned_with_the_heatmap(latent_shape, size):
    """The unjudged share lands on exactly the cells the heatmap does not (the same downsampling, on the unpacked grid
    of every family: FLUX's 2x2 packing is undone before heatmaps meet latents)."""
    algorithm = algorithm_class("pxpo")(_config(), latent_shape)
    heatmaps = torch.zeros(1, size, size)
    cell = size // latent_shape[1]
    heatmaps[:, cell : 3 * cell, 0 : 2 * cell] = -2.0  # latent cells [1:3, 0:2]
    judged = heatmaps != 0
    on_grid, keep = algorithm.rewards(heatmaps), algorithm.keep(judged)
    assert keep.shape == on_grid.shape == (1, 1, *latent_shape[1:])
    assert torch.equal(keep == 0, on_grid != 0) and torch.all(keep[on_grid == 0] == 1)


def test_nothing_is_kept_when_the_reward_judges_everything_or_the_coefficient_is_zero():
    assert algorithm_class("pxpo")(_config(), (4, 16, 16)).keep(None) is None
    off = algorithm_class("pxpo")(validate_config({}), (4, 16, 16))
    assert off.keep(torch.zeros(1, 64, 64, dtype=torch.bool)) is None


def test_built_in_rewards_say_what_they_judge():
    images = torch.rand(2, 3, 64, 64)
    painted = np.zeros((64, 64), np.float32)
    painted[:8, :8] = 2.0
    output = load_reward("painted")(images[:1], ["p"], [{"painted": painted}])
    assert torch.equal(output.judged[0], torch.from_numpy(painted != 0))
    assert isinstance(load_reward("blue_penalty")(images, ["p"] * 2, [{}] * 2), torch.Tensor)  # a tensor: judges all
    water = load_reward("colour_channel", classes=["water"])(images, ["p"] * 2, [{}] * 2)
    assert torch.all(water.heatmaps[~water.judged] == 0)
    hair = load_reward("segmentation", classes={"hair": -1.0})(images, ["p"] * 2, [{}] * 2)
    assert hair.judged.dtype == torch.bool and hair.judged.shape == (2, 64, 64)


def test_a_weighted_reward_judges_the_union_of_its_terms_or_everything():
    images = torch.rand(1, 3, 64, 64)
    painted = np.zeros((64, 64), np.float32)
    painted[:8, :8] = 2.0
    union = weighted_reward([{"name": "painted"}, {"name": "colour_channel", "kwargs": {"classes": ["water"]}}])
    output = union(images, ["p"], [{"painted": painted}])
    water = load_reward("colour_channel", classes=["water"])(images, ["p"], [{}]).judged
    assert torch.equal(output.judged, water | torch.from_numpy(painted != 0)[None])
    everything = weighted_reward([{"name": "painted"}, {"name": "blue_penalty"}])(images, ["p"], [{"painted": painted}])
    assert everything.judged is None


@pytest.mark.parametrize(
    "judged,match",
    [
        (torch.ones(2, 8, 8), "judged map that is a torch.float32 tensor: expected a bool tensor"),
        (np.ones((2, 8, 8), bool), "judged map that is ndarray"),
        (torch.ones(2, 4, 4, dtype=torch.bool), r"judged map of shape \[2, 4, 4\]: expected \[2, 8, 8\]"),
    ],
)
def test_a_bad_judged_map_is_named_in_one_line(judged, match):
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(RewardError, match=match):
        check_reward_output(RewardOutput(torch.ones(2, 8, 8), judged=judged), images, "r")


def test_an_image_judged_nowhere_is_kept_everywhere():
    """A segmentation reward on an image without its classes judges nothing there (its small values are no opinion)."""
    output = check_reward_output(RewardOutput(torch.full((1, 8, 8), -0.01), judged=torch.zeros(1, 8, 8, dtype=torch.bool)), torch.rand(1, 3, 8, 8), "r")
    keep = algorithm_class("pxpo")(_config(), (4, 4, 4)).keep(output.judged)
    assert torch.all(keep == 1)


@pytest.mark.parametrize(
    "setting,match",
    [
        ("train.preserve_coef=-1", "train.preserve_coef: Input should be greater than or equal to 0"),
        ("train.preserve_coef=nan", "train.preserve_coef: Input should be a finite number"),
        ("train.preserve_reference='nearby'", "train.preserve_reference: Input should be 'base' or 'sampling'"),
    ],
)
def test_bad_preservation_settings_are_refused(setting, match):
    from pxpo.config import load_config

    with pytest.raises(ConfigError, match=match):
        load_config(None, [setting])


def test_the_base_reference_needs_lora():
    with pytest.raises(ConfigError, match="preserve_reference = 'base' needs model.lora = true"):
        validate_config({"model": {"lora": False}, "train": {"preserve_coef": 0.1}})
    validate_config({"model": {"lora": False}, "train": {"preserve_coef": 0.1, "preserve_reference": "sampling"}})


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["base", "sampling"])
def test_a_run_logs_the_term_and_trains_only_against_unjudged_cells(make_config, reference):
    """Through the trainer: a painted single-image step with preservation keeps exactly the unpainted latent cells and
    logs a positive ``preserve`` (the second inner epoch is off both references)."""
    from pxpo.hooks import Callback
    from pxpo.trainer import Trainer

    painted = np.zeros((64, 64), np.float32)
    painted[:32, :32] = 2.0
    seen = {}

    class Grab(Callback):
        def on_phase_end(self, trainer, phase, epoch, result):
            seen[phase] = result

    config = make_config(
        model={"pretrained": "tiny-random"},
        sample={"single_image_seed": 1, "batch_size": 1, "num_steps": 3},
        train={"batch_size": 1, "num_inner_epochs": 2, "preserve_coef": 0.5, "preserve_reference": reference},
        advantage={"normalization": "none"}, reward={"name": "painted"}, eval={"seeds": [1], "reward": False},
    )  # fmt: skip
    trainer = Trainer(config, progress=False, callbacks=[Grab()])
    record = trainer.step(1, metadata={"painted": painted})
    assert "preserve" in record and record["preserve"] >= 0
    keep = trainer.algorithm.keep(seen["reward"].judged)
    assert torch.all(keep[..., :8, :8] == 0) and torch.all(keep[..., 8:, :] == 1)
    assert record["preserve"] > 0  # the second inner epoch is off the sampling policy and off the base


def test_a_reward_output_moves_whole_to_the_training_device():
    """A reward may answer on another device (an HTTP reward answers on the CPU): heatmaps, terms and judged map all move
    together, so the judged map meets the latents where they are (no device here but the CPU: the meta device stands in)."""
    output = RewardOutput(torch.zeros(1, 8, 8), {"a": torch.zeros(1)}, torch.zeros(1, 8, 8, dtype=torch.bool)).to("meta")
    assert {output.heatmaps.device.type, output.terms["a"].device.type, output.judged.device.type} == {"meta"}
