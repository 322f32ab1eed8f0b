"""Advantage Weighted Matching (``awm``) and pixel-wise AWM (``pxawm``): the flow-matching likelihood of the policy's own
samples, weighted by per-image or per-location advantages, against independent computations."""

import pytest
import torch

from pxpo.algorithms import Batch, algorithm_class
from pxpo.config import ConfigError, validate_config
from pxpo.families import family_for
from pxpo.losses import matching_log_likelihood
from pxpo.rollout import Policy, sample_trajectories, velocity_on_forward_process
from pxpo.schedule import training_batches
from pxpo.world.architecture import build_tiny_sd3_pipeline

GRID = (4, 16, 16)


def _setup(algorithm="pxawm", **train):
    config = validate_config({"model": {"pretrained": "tiny-random-sd3"}, "sample": {"num_steps": 4, "batch_size": 3, "height": 64, "width": 64},
                              "train": {"algorithm": algorithm, "batch_size": 3, **train}})  # fmt: skip
    family = family_for(build_tiny_sd3_pipeline())
    family.add_lora(rank=4)
    with torch.no_grad():
        for name, p in family.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    trajectories = sample_trajectories(family, ["red taxi in traffic", "nature landscape", "red taxi in traffic"], num_steps=4,
                                       guidance_scale=1.0, noise_level=0.7, height=64, width=64,
                                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    policy = Policy(family, family.denoiser, 1.0, 0.7)
    return config, family, trajectories, policy


def test_the_matching_likelihood_is_minus_the_squared_velocity_error():
    v, target = torch.randn(2, *GRID, dtype=torch.float64), torch.randn(2, *GRID, dtype=torch.float64)
    expected = torch.stack([-(a - b).pow(2) for a, b in zip(v, target)])
    torch.testing.assert_close(matching_log_likelihood(v, target), expected.float())


def test_the_velocity_is_taken_on_the_forward_process_of_the_samples_own_x0():
    """x_t = (1 - sigma_t) x_0 + sigma_t eps at the sampler's sigma of each step, the target eps - x_0: checked against
    the sigmas the diffusers scheduler sets and what the transformer is called with."""
    _, family, trajectories, _ = _setup()
    rows, steps = torch.tensor([2, 0]), torch.tensor([1, 3])
    noise = torch.randn(2, *GRID)
    seen = []
    handle = family.denoiser.register_forward_hook(lambda m, args, kwargs, out: seen.append((kwargs["hidden_states"], kwargs["timestep"])),
                                                   with_kwargs=True)  # fmt: skip
    with torch.no_grad():
        v, target = velocity_on_forward_process(family, family.denoiser, trajectories, rows, steps, noise, guidance_scale=1.0)
    handle.remove()
    sigmas = family.pipe.scheduler.sigmas[steps].view(2, 1, 1, 1)  # set to the trajectories' 4 steps
    x0 = trajectories.latents[rows, -1]
    torch.testing.assert_close(seen[0][0], (1 - sigmas) * x0 + sigmas * noise)
    torch.testing.assert_close(seen[0][1], trajectories.timesteps[steps])
    torch.testing.assert_close(target, noise - x0)
    assert v.shape == (2, *GRID)


def _batch(trajectories, advantages):
    return Batch(trajectories, torch.zeros(len(trajectories), 64, 64), advantages)


def test_pixel_awm_on_constant_maps_is_published_awm_loss_and_gradient():
    """At ratio 1, pxawm with an advantage map constant over each image has AWM's loss and gradient; AWM's loss is the
    published per-sample one: mean_b max(-A_b r_b, -A_b clip(r_b)), r_b = exp(l_b - l_b_old), l_b the element mean of
    -(v - (eps - x_0))^2 (Flow-Factory's AWM trainer with uniform weighting), written out here by hand."""
    config, family, trajectories, policy = _setup()
    params = [p for p in family.denoiser.parameters() if p.requires_grad]
    a = torch.tensor([1.5, -0.5, 0.25])
    rows, steps = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 3])
    pixel = algorithm_class("pxawm")(config, GRID[:1] + GRID[1:], family)
    scalar = algorithm_class("awm")(validate_config({**config.model_dump(), "train": {**config.train.model_dump(), "algorithm": "awm",
                                                                                          "clip_range": None}}), GRID, family)  # fmt: skip
    pixel_batch, scalar_batch = _batch(trajectories, a.view(3, 1, 1, 1).expand(3, 1, 16, 16)), _batch(trajectories, a)
    nothing = torch.zeros(0, dtype=torch.long)
    pixel.prepare(policy, pixel_batch, nothing, nothing, seed=11)  # one optimiser step per epoch: the old likelihood is
    scalar.prepare(policy, scalar_batch, nothing, nothing, seed=11)  # the current one
    assert pixel.old is None and scalar.old is None
    out_pixel = pixel.loss(policy, pixel_batch, rows, steps)
    out_scalar = scalar.loss(policy, scalar_batch, rows, steps)
    from pxpo.algorithms.matching import pair_noise

    v, target = velocity_on_forward_process(family, family.denoiser, trajectories, rows, steps, pair_noise(11, rows, steps, GRID, "cpu"),
                                            guidance_scale=1.0)  # fmt: skip
    l = -((v - target) ** 2).mean(dim=(1, 2, 3))
    ratio = torch.exp(l - l.detach())
    clip = scalar.config.train.clip_range
    published = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip)).mean()
    torch.testing.assert_close(out_scalar.loss, published)
    torch.testing.assert_close(out_pixel.loss, published)
    grads = [torch.autograd.grad(x, params) for x in (out_pixel.loss, out_scalar.loss, published)]
    assert max(g.abs().max() for g in grads[2]) > 0
    for g_pixel, g_scalar, g_published in zip(*grads):
        torch.testing.assert_close(g_pixel, g_published, rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(g_scalar, g_published, rtol=1e-4, atol=1e-8)


def test_the_noise_of_a_pair_does_not_depend_on_its_batch():
    from pxpo.algorithms.matching import pair_noise

    together = pair_noise(5, torch.tensor([0, 3, 1]), torch.tensor([2, 2, 0]), GRID, "cpu")
    alone = pair_noise(5, torch.tensor([3]), torch.tensor([2]), GRID, "cpu")
    assert torch.equal(together[1], alone[0])
    assert not torch.equal(together[0], together[1]) and not torch.equal(pair_noise(6, torch.tensor([3]), torch.tensor([2]), GRID, "cpu"), alone)


def test_with_several_optimiser_steps_the_old_likelihood_is_the_sampling_policys():
    """Two training batches per epoch: before the update, every trained pair's likelihood under the weights that sampled
    is kept; the loss's ratio uses it after the weights moved (not the moved policy's own likelihood)."""
    config, family, trajectories, policy = _setup(batch_size=1)
    algorithm = algorithm_class("pxawm")(config, GRID, family)
    calls = list(training_batches(3, config, torch.Generator().manual_seed(0)))
    batch = _batch(trajectories, torch.ones(3, 1, 16, 16))
    algorithm.prepare(policy, batch, torch.cat([c.rows for c in calls]), torch.cat([c.steps for c in calls]), seed=3)
    visited = torch.zeros(3, 4, dtype=torch.bool)
    for call in calls:
        visited[call.rows, call.steps] = True
    assert torch.equal(~torch.isnan(algorithm.old).flatten(2).any(dim=2), visited)
    rows, steps = calls[0].rows, calls[0].steps
    with torch.no_grad():
        torch.testing.assert_close(algorithm.old[rows, steps], algorithm.likelihood(policy, batch, rows, steps, algorithm.noise(batch, rows, steps))[0])
        for name, p in family.denoiser.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)  # the weights move (an optimiser step)
        assert algorithm.loss(policy, batch, rows, steps).approx_kl > 0  # the ratio now differs from 1


def test_awm_refuses_a_ddim_model():
    from pxpo.world.architecture import build_tiny_pipeline

    config = validate_config({"train": {"algorithm": "awm"}})
    with pytest.raises(ValueError, match="train.algorithm = 'awm' trains flow-matching models .* StableDiffusionPipeline is a DDIM model: use pxpo or ddpo"):
        algorithm_class("awm")(config, GRID, family_for(build_tiny_pipeline()))


def test_unknown_algorithm_names_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown algorithm 'nft': expected one of awm, ddpo, pxawm, pxpo"):
        validate_config({"train": {"algorithm": "nft"}})


@pytest.mark.slow  # trains
@pytest.mark.parametrize("algorithm", ["awm", "pxawm"])
def test_a_short_run_from_deterministic_rollouts(algorithm, make_config, phases):
    """Every sampling step deterministic (an empty SDE window): AWM needs only the final latents."""
    from pxpo.trainer import Trainer

    config = make_config(model={"pretrained": "tiny-random-sd3"},
                         sample={"num_steps": 3, "batch_size": 4, "group_size": 2, "height": 64, "width": 64, "sde_window": [0, 0]},
                         train={"algorithm": algorithm, "batch_size": 2, "kl_coef": 0.1, "learning_rate": 1e-3},
                         advantage={"normalization": "group"}, eval={"seeds": [0]})  # fmt: skip
    metrics = Trainer(config, progress=False, callbacks=[phases]).train()
    assert phases.results["sample", 1].log_probs.shape[1] == 0  # nothing stochastic was stored
    # two training batches per epoch: the second is off-policy (its ratio against the sampling policy's likelihood)
    assert all(m["approx_kl"] > 0 and m["kl"] > 0 and torch.isfinite(torch.tensor(m["loss"])) for m in metrics[1:])
