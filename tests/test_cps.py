"""CPS, coefficients-preserving sampling (``cps_step_with_logprob``, ``sample.sde_type = "cps"``): its maths against the
paper's formulas in float64 and the scheduler's Euler step, its draws, its deterministic last step, the flow families'
dispatch, the SD family's refusal, the config's checks and a short training run."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pxpo.config import ConfigError, check_resume
from pxpo.families import family_for
from pxpo.rollout import recompute_log_prob, sample_trajectories
from pxpo.sampling import cps_step_with_logprob, flow_step_with_logprob
from pxpo.world.architecture import build_tiny_flux_pipeline, build_tiny_sd3_pipeline, flow_scheduler_config

SHAPE = (3, 4, 8, 8)
STEPS = 10


def make_scheduler(steps=STEPS, **overrides):
    scheduler = FlowMatchEulerDiscreteScheduler(**{**flow_scheduler_config(), **overrides})
    scheduler.set_timesteps(steps)
    return scheduler


def reference_cps(sigmas, i, x, v, eta):
    """The CPS step written out in float64 from the paper's formulas (independent of the code under test):
    x0 = x - s v, x1 = x + (1 - s) v, std = s' sin(eta pi / 2), mean = (1 - s') x0 + sqrt(s'^2 - std^2) x1."""
    sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
    x, v = x.double(), v.double()
    x0, x1 = x - sigma * v, x + (1 - sigma) * v
    std = sigma_next * math.sin(eta * math.pi / 2)
    return (1 - sigma_next) * x0 + math.sqrt(max(sigma_next**2 - std**2, 0.0)) * x1, std


# the maths -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("eta", [0.3, 0.8, 1.0])
def test_cps_mean_std_and_log_prob_equal_the_papers_gaussian_in_float64(shift, eta):
    scheduler = make_scheduler(shift=shift)
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)
    for i in (0, 4, STEPS - 2):  # the first step has sigma = 1; STEPS - 2 is the last stochastic one
        scored = torch.randn(SHAPE)  # any next latents: the density is scored, not only the step's own draws
        for prev_sample in (None, scored):
            out = cps_step_with_logprob(scheduler, v, scheduler.timesteps[i], x, eta, prev_sample, torch.Generator().manual_seed(i))
            mean, std = reference_cps(scheduler.sigmas, i, x, v, eta)
            expected = torch.distributions.Normal(mean, std).log_prob(out.prev_sample.double())
            assert out.log_prob.shape == SHAPE and out.std.shape == (SHAPE[0], 1, 1, 1)
            torch.testing.assert_close(out.mean.double(), mean, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.std.flatten().double(), torch.full((SHAPE[0],), std, dtype=torch.float64), rtol=1e-6, atol=0)
            # float32 against float64: (x - mean)^2 / 2 std^2 rounds to a few 1e-4 when std is small (the late steps)
            torch.testing.assert_close(out.log_prob.double(), expected, rtol=1e-4, atol=1e-3)
        assert torch.equal(out.prev_sample, scored)


def test_cps_draws_are_mean_plus_std_times_the_generators_normal_noise():
    scheduler = make_scheduler()
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)
    t = scheduler.timesteps[3]
    out = cps_step_with_logprob(scheduler, v, t, x, 0.8, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out.prev_sample, out.mean + out.std * noise, rtol=0, atol=1e-6)
    per_sample = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # one generator per sample: per-sample seeds
    alone = cps_step_with_logprob(scheduler, v[1:2], t, x[1:2], 0.8, generator=torch.Generator().manual_seed(2))
    batch = cps_step_with_logprob(scheduler, v, t, x, 0.8, generator=per_sample)
    torch.testing.assert_close(batch.prev_sample[1:2], alone.prev_sample)


@pytest.mark.parametrize("i", [0, 5, STEPS - 2])
def test_cps_draws_are_distributed_as_the_steps_gaussian(i):
    scheduler = make_scheduler(shift=3.0)
    shape = (64, 4, 16, 16)  # n = 65536 standardised residuals
    x, v = torch.randn(shape), torch.randn(shape)
    out = cps_step_with_logprob(scheduler, v, scheduler.timesteps[i], x, 0.8, generator=torch.Generator().manual_seed(i))
    z = ((out.prev_sample - out.mean) / out.std).double().flatten()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)  # N(0, 1): mean 0 to 5 standard errors
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)  # variance 1 to 5 standard errors
    assert abs(((z**4).mean().item()) - 3) < 5 * math.sqrt(96 / n)  # Gaussian kurtosis 3 (var of z^4 is 96)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_small_noise_level_mean_is_the_schedulers_euler_step(shift):
    scheduler = make_scheduler(shift=shift)
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)
    for i in range(STEPS):
        t = scheduler.timesteps[i]
        scheduler.set_timesteps(STEPS)  # a fresh scheduler finds its step from t
        euler = scheduler.step(v, t, x).prev_sample
        out = cps_step_with_logprob(scheduler, v, t, x, noise_level=1e-6)
        torch.testing.assert_close(out.mean, euler, rtol=1e-5, atol=1e-5)


def test_the_last_step_is_deterministic_and_cannot_be_scored():
    scheduler = make_scheduler()
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)
    last = scheduler.timesteps[-1]
    out = cps_step_with_logprob(scheduler, v, last, x, 0.8, generator=torch.Generator().manual_seed(0))
    sigma = float(scheduler.sigmas[-2])
    torch.testing.assert_close(out.prev_sample, x - sigma * v)  # x0_hat: sigma' = 0 leaves no noise
    assert torch.equal(out.prev_sample, out.mean) and bool((out.std == 0).all())
    assert torch.equal(out.log_prob, torch.zeros(SHAPE))  # recorded: a certain draw
    with pytest.raises(ValueError, match="last step, which is deterministic"):
        cps_step_with_logprob(scheduler, v, last, x, 0.8, prev_sample=out.prev_sample)
    mixed = torch.stack([scheduler.timesteps[0], last, last])  # per-sample timesteps, one of them stochastic
    with pytest.raises(ValueError, match="last step, which is deterministic"):
        cps_step_with_logprob(scheduler, v, mixed, x, 0.8)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_noise_level_outside_zero_one_is_refused(bad):
    scheduler = make_scheduler()
    with pytest.raises(ValueError, match=rf"noise_level = {bad}: CPS needs noise_level in \(0, 1\]"):
        cps_step_with_logprob(scheduler, torch.randn(SHAPE), scheduler.timesteps[0], torch.randn(SHAPE), bad)


def test_inputs_are_checked_as_for_the_sde_step():
    scheduler = make_scheduler()
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        cps_step_with_logprob(scheduler, torch.randn(SHAPE), 123.4, torch.randn(SHAPE), 0.8)
    with pytest.raises(ValueError, match="they must match"):
        cps_step_with_logprob(scheduler, torch.randn(2, 4, 8, 8), scheduler.timesteps[0], torch.randn(SHAPE), 0.8)
    with pytest.raises(TypeError, match="cps_step_with_logprob needs a FlowMatchEulerDiscreteScheduler"):
        cps_step_with_logprob(object(), torch.randn(SHAPE), 1.0, torch.randn(SHAPE), 0.8)


# the families ------------------------------------------------------------------------------------------------------
BUILDERS = {"sd3": build_tiny_sd3_pipeline, "flux": build_tiny_flux_pipeline}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_flow_families_step_with_the_configured_kind(name):
    pipe = BUILDERS[name]()
    sde, cps = family_for(pipe), family_for(pipe, "cps")
    assert (sde.sde_type, cps.sde_type) == ("sde", "cps")
    sde.set_timesteps(4, sde.latent_shape())
    x = torch.randn(2, *sde.latent_shape())
    v, t, prev = torch.randn_like(x), pipe.scheduler.timesteps[1], torch.randn_like(x)
    for family, step in ((sde, flow_step_with_logprob), (cps, cps_step_with_logprob)):
        assert torch.equal(family.step(v, t, x, 0.8, prev).log_prob, step(pipe.scheduler, v, t, x, 0.8, prev).log_prob)
    assert not torch.allclose(sde.step(v, t, x, 0.8, prev).log_prob, cps.step(v, t, x, 0.8, prev).log_prob)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_recomputed_cps_log_probs_reproduce_the_sampled_ones(name):
    pipe = BUILDERS[name]()
    family = family_for(pipe, "cps")
    steps, rows = 3, torch.tensor([0, 1])
    generator = [torch.Generator().manual_seed(s) for s in (0, 1)]
    with torch.no_grad():
        trajectories = sample_trajectories(family, ["a red car", "a cat"], num_steps=steps, guidance_scale=3.0, noise_level=0.8, generator=generator)
        assert torch.isfinite(trajectories.images).all() and torch.equal(trajectories.log_probs[:, -1], torch.zeros_like(trajectories.log_probs[:, -1]))
        for j in range(steps - 1):  # the stochastic steps, as sampled (the same batch): bit for bit
            out = recompute_log_prob(family, family.denoiser, trajectories, rows, torch.full((2,), j), guidance_scale=3.0, noise_level=0.8)
            assert torch.equal(out.log_prob, trajectories.log_probs[:, j]), j
            assert bool((out.log_prob < 0).any())  # a real density, not the zero of the last step
        with pytest.raises(ValueError, match="deterministic"):
            recompute_log_prob(family, family.denoiser, trajectories, rows, torch.full((2,), steps - 1), guidance_scale=3.0, noise_level=0.8)


def test_the_sd_family_refuses_cps(tiny_pipe):
    with pytest.raises(ValueError, match=r"sample.sde_type = 'cps': a StableDiffusionPipeline \(sd family\) samples with 'sde' only"):
        family_for(tiny_pipe, "cps")
    assert family_for(tiny_pipe).sde_type == "sde"


def test_a_trainer_refuses_cps_for_an_sd_pipeline(make_config, tiny_pipe):
    from pxpo.trainer import Trainer

    with pytest.raises(ValueError, match="StableDiffusionPipeline"):
        Trainer(make_config(sample={"sde_type": "cps"}), pipeline=tiny_pipe, progress=False)


def test_pxpo_sample_takes_cps_for_flow_models_and_refuses_it_for_sd(tmp_path, capsys):
    from pxpo.cli import main

    out = tmp_path / "strip.png"
    assert main(["sample", "tiny-random-sd3", "--prompt", "p", "--num-steps", "2", "--sde-type", "cps", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["sample", "tiny-random", "--prompt", "p", "--sde-type", "cps", "--out", str(out)]) == 2
    assert "error: sample.sde_type = 'cps': a StableDiffusionPipeline (sd family) samples with 'sde' only" in capsys.readouterr().err


# the config ----------------------------------------------------------------------------------------------------------
def test_cps_trains_every_step_but_the_last(make_config):
    assert make_config().sample.sde_type == "sde" and make_config().step_range == (0, 8)  # the default: unchanged
    config = make_config(sample={"sde_type": "cps"})
    assert config.step_range == (0, 7) and config.num_train_timesteps == 7
    assert make_config(sample={"sde_type": "cps"}, model={"lora": True}, train={"step_window": [2, 7]}).step_range == (2, 7)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"sample": {"sde_type": "ode"}}, "sample.sde_type"),
        ({"sample": {"sde_type": "cps", "noise_level": 1.5}}, r"sample.noise_level = 1.5: sample.sde_type = 'cps' needs a noise level in \(0, 1\]"),
        ({"sample": {"sde_type": "cps", "num_steps": 1}}, "sample.num_steps = 1: sample.sde_type = 'cps' needs at least 2"),
        ({"sample": {"sde_type": "cps"}, "model": {"lora": True}, "train": {"step_window": [4, 8]}}, r"train.step_window = \[4, 8\] ends with the last step.*at 7 at most"),
        ({"sample": {"sde_type": "cps", "sde_window": [5, 8]}}, r"sample.sde_window = \[5, 8\] ends with the last step"),
    ],
)
def test_bad_cps_settings_are_refused_in_one_line(make_config, sections, message):
    with pytest.raises(ValueError, match=message) as caught:
        make_config(**sections)
    assert len(str(caught.value).splitlines()) == 2  # "invalid config:" and the one line


def test_changing_the_sde_type_is_refused_on_resume(make_config):
    with pytest.raises(ConfigError, match=r"sample.sde_type = 'cps' \(the run has 'sde'\)"):
        check_resume(make_config(), make_config(sample={"sde_type": "cps"}))


# a run -------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_short_cps_run_trains_and_pxpo_sample_uses_the_runs_sde_type(make_config, phases, monkeypatch, tmp_path):
    import pxpo.families
    from pxpo.cli import main
    from pxpo.trainer import Trainer

    config = make_config(
        model={"pretrained": "tiny-random-sd3", "lora": True},
        sample={"sde_type": "cps", "num_steps": 3, "batch_size": 2, "group_size": 2, "noise_level": 0.8},
        train={"batch_size": 2},
        eval={"seeds": [0]},
        run={"num_epochs": 1},
    )
    trainer = Trainer(config, progress=False, callbacks=[phases])
    records = trainer.train()
    trajectories = phases.results["sample", 1]
    assert torch.equal(trajectories.log_probs[:, -1], torch.zeros_like(trajectories.log_probs[:, -1]))  # the deterministic step
    assert all(math.isfinite(records[-1][key]) for key in ("loss", "reward_mean"))
    built = []
    real = pxpo.families.family_for
    monkeypatch.setattr(pxpo.families, "family_for", lambda pipe, sde_type="sde": built.append(sde_type) or real(pipe, sde_type))
    out = tmp_path / "strip.png"
    assert main(["sample", str(trainer.run.path), "--prompt", "a red car", "--num-steps", "3", "--noise-level", "0.8", "--out", str(out)]) == 0
    assert out.is_file() and built[-1] == "cps"
