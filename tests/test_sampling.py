"""The sampler against independent computations: torch.distributions.Normal, DDIMScheduler.step and
the diffusers pipeline's own sampling loop."""

import pytest
import torch
from diffusers import DDIMScheduler

from pxpo.rollout import recompute_log_prob, sample_trajectories
from pxpo.sampling import ddim_step_with_logprob
from pxpo.world.architecture import scheduler_config

SHAPE = (3, 4, 8, 8)


def make_scheduler(steps=20, **overrides):
    scheduler = DDIMScheduler(**{**scheduler_config(), **overrides})
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_log_prob_equals_normal_log_prob(eta, prediction_type):
    scheduler = make_scheduler(prediction_type=prediction_type)
    model_output, sample = torch.randn(SHAPE), torch.randn(SHAPE)
    for t in scheduler.timesteps[[0, 7, -1]]:
        out = ddim_step_with_logprob(scheduler, model_output, t, sample, eta, generator=torch.Generator().manual_seed(1))
        expected = torch.distributions.Normal(out.mean, out.std.expand_as(out.mean)).log_prob(out.prev_sample)
        assert out.log_prob.shape == SHAPE
        torch.testing.assert_close(out.log_prob, expected, rtol=1e-5, atol=1e-5)
        # DDPO's value is the element mean of the same log-probabilities.
        torch.testing.assert_close(out.log_prob.mean(dim=(1, 2, 3)), expected.mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_mean_and_std_agree_with_ddim_scheduler_step(eta, prediction_type):
    scheduler = make_scheduler(prediction_type=prediction_type)
    model_output, sample, noise = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    for t in scheduler.timesteps[[0, 10, -1]]:
        reference = scheduler.step(model_output, t, sample, eta=eta, variance_noise=noise).prev_sample
        reference_mean = scheduler.step(model_output, t, sample, eta=eta, variance_noise=torch.zeros(SHAPE)).prev_sample
        prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        reference_std = eta * scheduler._get_variance(t, prev_t) ** 0.5

        out = ddim_step_with_logprob(scheduler, model_output, t, sample, eta, prev_sample=reference)
        torch.testing.assert_close(out.mean, reference_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.std.flatten(), torch.full((SHAPE[0],), float(reference_std)), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out.mean + out.std * noise, reference, rtol=1e-5, atol=1e-5)


def test_clip_sample_follows_the_scheduler_config():
    scheduler = make_scheduler(clip_sample=True, clip_sample_range=0.5)
    model_output, sample = 3 * torch.randn(SHAPE), 3 * torch.randn(SHAPE)
    t = scheduler.timesteps[5]
    reference_mean = scheduler.step(model_output, t, sample, eta=1.0, variance_noise=torch.zeros(SHAPE)).prev_sample
    out = ddim_step_with_logprob(scheduler, model_output, t, sample, 1.0)
    torch.testing.assert_close(out.mean, reference_mean, rtol=1e-5, atol=1e-6)


def test_eta_zero_is_rejected():
    scheduler = make_scheduler()
    with pytest.raises(ValueError, match="eta = 0"):
        ddim_step_with_logprob(scheduler, torch.randn(SHAPE), scheduler.timesteps[0], torch.randn(SHAPE), 0.0)


def test_deterministic_last_step_is_rejected():
    scheduler = make_scheduler(set_alpha_to_one=True)
    with pytest.raises(ValueError, match="zero variance"):
        ddim_step_with_logprob(scheduler, torch.randn(SHAPE), scheduler.timesteps[-1], torch.randn(SHAPE), 1.0)


def test_per_sample_timesteps_match_single_calls():
    scheduler = make_scheduler()
    model_output, sample, prev = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    timesteps = scheduler.timesteps[[0, 9, 19]]
    batched = ddim_step_with_logprob(scheduler, model_output, timesteps, sample, 1.0, prev_sample=prev)
    for i, t in enumerate(timesteps):
        single = ddim_step_with_logprob(scheduler, model_output[i : i + 1], t, sample[i : i + 1], 1.0, prev_sample=prev[i : i + 1])
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob)
        torch.testing.assert_close(batched.mean[i : i + 1], single.mean)


def test_same_seed_same_draw():
    scheduler = make_scheduler()
    args = (scheduler, torch.randn(SHAPE), scheduler.timesteps[3], torch.randn(SHAPE), 1.0)
    a = ddim_step_with_logprob(*args, generator=torch.Generator().manual_seed(7))
    b = ddim_step_with_logprob(*args, generator=torch.Generator().manual_seed(7))
    c = ddim_step_with_logprob(*args, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.prev_sample, b.prev_sample)
    assert not torch.equal(a.prev_sample, c.prev_sample)


def test_trajectories_reproduce_the_diffusers_pipeline(tiny_pipe):
    prompts = ["red taxi in traffic", "nature landscape"]
    seeds = [3, 4]
    ours = sample_trajectories(
        tiny_pipe, prompts, num_steps=6, guidance_scale=5.0, noise_level=1.0, generator=[torch.Generator().manual_seed(s) for s in seeds]
    )
    reference = tiny_pipe(
        prompts, num_inference_steps=6, guidance_scale=5.0, eta=1.0, output_type="pt",
        generator=[torch.Generator().manual_seed(s) for s in seeds],
    ).images
    assert ours.latents.shape == (2, 7, 4, 16, 16)
    assert ours.log_probs.shape == (2, 6, 4, 16, 16)
    assert ours.images.shape == (2, 3, 64, 64)
    torch.testing.assert_close(ours.images, reference, rtol=1e-4, atol=1e-4)


def test_recomputed_log_probs_equal_sampled_ones(tiny_pipe):
    trajectories = sample_trajectories(
        tiny_pipe, ["red taxi in traffic"] * 3, num_steps=5, guidance_scale=4.0, noise_level=1.0, generator=torch.Generator().manual_seed(0)
    )
    rows = torch.tensor([0, 1, 2])
    with torch.no_grad():
        for j in range(5):
            step = torch.full((3,), j)
            out = recompute_log_prob(tiny_pipe, tiny_pipe.unet, trajectories, rows, step, guidance_scale=4.0, noise_level=1.0)
            torch.testing.assert_close(out.log_prob, trajectories.log_probs[:, j], rtol=1e-4, atol=1e-4)
    # A different order of (sample, step) pairs in one batch gives the same values.
    mixed = recompute_log_prob(
        tiny_pipe, tiny_pipe.unet, trajectories, torch.tensor([2, 0]), torch.tensor([4, 1]), guidance_scale=4.0, noise_level=1.0
    )
    torch.testing.assert_close(mixed.log_prob[0], trajectories.log_probs[2, 4], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed.log_prob[1], trajectories.log_probs[0, 1], rtol=1e-4, atol=1e-4)
