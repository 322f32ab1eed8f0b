"""DDIM as a Gaussian policy (``ddim_step_with_logprob``) on its own, against torch.distributions.Normal and
DDIMScheduler.step, for scheduler options (prediction types, clipping) the bundled models do not use. What every
family's policy step and sampler must do is tested in test_families.py."""

import pytest
import torch
from diffusers import DDIMScheduler

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
