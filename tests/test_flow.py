"""Flow-GRPO's SDE step (``flow_step_with_logprob``) on its own, against the formula in float64 and the scheduler's
Euler step, for scheduler options (shift) the bundled models do not use. What every family's policy step must do
(the Normal density, the draws, no cross-talk, the pipeline's own sampler) is tested in test_families.py."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pxpo.sampling import flow_step_with_logprob
from pxpo.world.architecture import flow_scheduler_config

SHAPE = (3, 4, 8, 8)


def make_scheduler(steps=10, **overrides):
    scheduler = FlowMatchEulerDiscreteScheduler(**{**flow_scheduler_config(), **overrides})
    scheduler.set_timesteps(steps)
    return scheduler


def reference_step(sigmas, i, x, v, a):
    """The Flow-GRPO SDE step, written out in float64 from the formula (independent of the code under test)."""
    sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
    dt = sigma_next - sigma
    denominator = float(sigmas[1]) if sigma == 1 else sigma
    std_t = a * math.sqrt(sigma / (1 - denominator))
    x, v = x.double(), v.double()
    mean = x + dt * (v + std_t**2 / (2 * sigma) * (x + (1 - sigma) * v))
    return mean, std_t * math.sqrt(-dt)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("noise_level", [0.3, 0.7, 1.0])
def test_flow_log_prob_equals_normal_log_density_in_float64(shift, noise_level):
    scheduler = make_scheduler(shift=shift)
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)
    for i in (0, 4, len(scheduler.timesteps) - 1):  # the first step has sigma = 1; the last ends at sigma = 0
        out = flow_step_with_logprob(scheduler, v, scheduler.timesteps[i], x, noise_level, generator=torch.Generator().manual_seed(i))
        mean, std = reference_step(scheduler.sigmas, i, x, v, noise_level)
        expected = torch.distributions.Normal(mean, std).log_prob(out.prev_sample.double())
        assert out.log_prob.shape == SHAPE
        torch.testing.assert_close(out.mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.std.flatten().double(), torch.full((SHAPE[0],), std, dtype=torch.float64), rtol=1e-5, atol=1e-8)
        # the code computes in float32 and the last steps' std is ~0.03: a few 1e-4 of rounding in (x - mean)^2 / 2 std^2
        torch.testing.assert_close(out.log_prob.double(), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_small_noise_level_mean_is_the_schedulers_euler_step(shift):
    scheduler = make_scheduler(shift=shift)
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)
    for i in range(len(scheduler.timesteps)):
        t = scheduler.timesteps[i]
        scheduler.set_timesteps(len(scheduler.timesteps))  # a fresh scheduler finds its step from t
        euler = scheduler.step(v, t, x).prev_sample
        out = flow_step_with_logprob(scheduler, v, t, x, noise_level=1e-6)
        torch.testing.assert_close(out.mean, euler, rtol=1e-5, atol=1e-5)


def test_a_timestep_that_is_not_the_schedulers_is_refused():
    scheduler = make_scheduler()
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        flow_step_with_logprob(scheduler, torch.randn(SHAPE), 123.4, torch.randn(SHAPE), 0.7)


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_non_positive_noise_level_is_refused(bad):
    scheduler = make_scheduler()
    with pytest.raises(ValueError, match="noise_level"):
        flow_step_with_logprob(scheduler, torch.randn(SHAPE), scheduler.timesteps[0], torch.randn(SHAPE), bad)
