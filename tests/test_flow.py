"""Flow-matching families (SD3, FLUX): the SDE policy step against independent computations, the family
interface, LoRA round trips and short training runs."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

from pxpo.families import family_for
from pxpo.families.flux import pack, unpack
from pxpo.losses import ddpo_loss, pxpo_loss
from pxpo.rollout import recompute_log_prob, sample_trajectories
from pxpo.sampling import flow_step_with_logprob
from pxpo.trainer import Trainer
from pxpo.world.architecture import build_tiny_flux_pipeline, build_tiny_sd3_pipeline, flow_scheduler_config

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
        scheduler._step_index = None  # the scheduler finds the step from t
        euler = scheduler.step(v, t, x).prev_sample
        out = flow_step_with_logprob(scheduler, v, t, x, noise_level=1e-6)
        torch.testing.assert_close(out.mean, euler, rtol=1e-5, atol=1e-5)


def test_sampled_steps_are_distributed_as_the_gaussian():
    scheduler = make_scheduler()
    x, v = torch.randn(64, 4, 16, 16), torch.randn(64, 4, 16, 16)
    out = flow_step_with_logprob(scheduler, v, scheduler.timesteps[3], x, 0.7, generator=torch.Generator().manual_seed(0))
    z = (out.prev_sample - out.mean) / out.std  # 65,536 draws: standard normal
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    assert abs((z.abs() < 1).float().mean().item() - 0.6827) < 0.01


def test_per_sample_timesteps_match_single_calls_and_unknown_timesteps_are_refused():
    scheduler = make_scheduler()
    v, x, prev = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    timesteps = scheduler.timesteps[[0, 5, 9]]
    batched = flow_step_with_logprob(scheduler, v, timesteps, x, 0.7, prev_sample=prev)
    for i, t in enumerate(timesteps):
        single = flow_step_with_logprob(scheduler, v[i : i + 1], t, x[i : i + 1], 0.7, prev_sample=prev[i : i + 1])
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        flow_step_with_logprob(scheduler, v, 123.4, x, 0.7)


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_non_positive_noise_level_is_refused(bad):
    scheduler = make_scheduler()
    with pytest.raises(ValueError, match="noise_level"):
        flow_step_with_logprob(scheduler, torch.randn(SHAPE), scheduler.timesteps[0], torch.randn(SHAPE), bad)


def test_no_gradient_cross_talk_between_elements():
    scheduler = make_scheduler()
    v = torch.randn(SHAPE, requires_grad=True)
    x = torch.randn(SHAPE)
    out = flow_step_with_logprob(scheduler, v, scheduler.timesteps[2], x, 0.7, generator=torch.Generator().manual_seed(0))
    advantages = torch.zeros(SHAPE[0], 1, *SHAPE[2:])
    advantages[:, :, 2, 5] = 1.0  # feedback at one latent location only
    pxpo_loss(out.log_prob, out.log_prob.detach(), advantages, clip_range=0.2).loss.backward()
    touched = v.grad.abs().sum(dim=(0, 1)) > 0
    assert touched[2, 5] and touched.sum() == 1


def test_flux_packing_round_trips_and_matches_diffusers():
    latents = torch.randn(2, 4, 16, 12)
    tokens = pack(latents)
    assert tokens.shape == (2, 8 * 6, 16)
    torch.testing.assert_close(unpack(tokens, 16, 12), latents)
    # diffusers' own unpacking (from pixel sizes) agrees with ours
    torch.testing.assert_close(FluxPipeline._unpack_latents(tokens, 64, 48, 4), latents)


BUILDERS = {"sd3": build_tiny_sd3_pipeline, "flux": build_tiny_flux_pipeline}


@pytest.mark.parametrize("family_name", list(BUILDERS))
def test_trajectories_recompute_exactly_and_flow_ode_limit_matches_the_pipeline(family_name):
    pipe = BUILDERS[family_name]()
    family = family_for(pipe)
    assert family.name == family_name and family.latent_shape(64, 64) == (4, 16, 16)
    kwargs = dict(num_steps=4, guidance_scale=3.0, height=64, width=64)
    trajectories = sample_trajectories(pipe, ["red taxi in traffic", "nature landscape"], noise_level=0.7,
                                       generator=torch.Generator().manual_seed(0), **kwargs)  # fmt: skip
    assert trajectories.latents.shape == (2, 5, 4, 16, 16) and trajectories.log_probs.shape == (2, 4, 4, 16, 16)
    with torch.no_grad():
        again = recompute_log_prob(family, family.denoiser, trajectories, torch.tensor([1, 0]), torch.tensor([3, 1]),
                                   guidance_scale=3.0, noise_level=0.7)  # fmt: skip
    torch.testing.assert_close(again.log_prob[0], trajectories.log_probs[1, 3], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again.log_prob[1], trajectories.log_probs[0, 1], rtol=1e-4, atol=1e-4)
    # With a vanishing noise level the policy is the ODE that the diffusers pipeline integrates.
    ode = sample_trajectories(pipe, ["nature landscape"], noise_level=1e-7, generator=torch.Generator().manual_seed(3), **kwargs)
    extra = {"max_sequence_length": 0} if family_name == "sd3" else {"max_sequence_length": pipe.tokenizer_2.model_max_length}
    reference = pipe("nature landscape", num_inference_steps=4, guidance_scale=3.0, height=64, width=64, output_type="pt",
                     latents=ode.latents[:, 0] if family_name == "sd3" else pack(ode.latents[:, 0]), **extra).images  # fmt: skip
    torch.testing.assert_close(ode.images, reference.float(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family_name", list(BUILDERS))
def test_pxpo_gradient_equals_the_scalar_gradient_on_constant_maps(family_name):
    family = family_for(BUILDERS[family_name]())
    family.add_lora(rank=4)
    with torch.no_grad():  # LoRA's B starts at zero: give it values so that the adapter matters
        for name, p in family.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    trajectories = sample_trajectories(family, ["red taxi in traffic"] * 3, num_steps=3, guidance_scale=3.0, noise_level=0.7,
                                       height=64, width=64, generator=torch.Generator().manual_seed(1))  # fmt: skip
    params = [p for p in family.denoiser.parameters() if p.requires_grad]
    advantages = torch.tensor([1.2, -0.4, 0.5])
    rows, steps = torch.arange(3), torch.tensor([0, 1, 2])
    step = recompute_log_prob(family, family.denoiser, trajectories, rows, steps, guidance_scale=3.0, noise_level=0.7)
    old = trajectories.log_probs[rows, steps]
    pxpo = pxpo_loss(step.log_prob, old, advantages.reshape(3, 1, 1, 1).expand(3, 1, 16, 16), clip_range=0.2)
    ddpo = ddpo_loss(step.log_prob.mean(dim=(1, 2, 3)), old.mean(dim=(1, 2, 3)), advantages, clip_range=1e-4)
    g_pxpo = torch.autograd.grad(pxpo.loss, params, retain_graph=True)
    g_ddpo = torch.autograd.grad(ddpo.loss, params)
    assert max(g.abs().max() for g in g_ddpo) > 0
    for a, b in zip(g_pxpo, g_ddpo):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family_name", list(BUILDERS))
def test_lora_round_trip_through_the_pipeline_class(family_name, tmp_path):
    family = family_for(BUILDERS[family_name]())
    family.add_lora(rank=4)
    with torch.no_grad():
        for name, p in family.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    family.save_lora(family.denoiser, tmp_path / "lora")
    fresh = BUILDERS[family_name]()
    fresh_family = family_for(fresh)
    latents = torch.randn(1, 4, 16, 16)
    conditioning = family.encode_prompts(["nature landscape"], guidance_scale=1.0)
    t = torch.tensor([500.0])
    with torch.no_grad():
        before = fresh_family.predict(fresh_family.denoiser, latents, t, conditioning, 1.0)
        fresh.load_lora_weights(str(tmp_path / "lora"))
        after = fresh_family.predict(fresh_family.denoiser, latents, t, conditioning, 1.0)
        trained = family.predict(family.denoiser, latents, t, conditioning, 1.0)
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(after, trained, rtol=1e-4, atol=1e-5)


def test_unsupported_pipelines_and_mismatched_schedulers_are_refused():
    class MyPipeline(DiffusionPipeline):
        pass

    with pytest.raises(ValueError, match="cannot train a MyPipeline: supported pipeline classes are FluxPipeline, "):
        family_for(MyPipeline())
    pipe = build_tiny_sd3_pipeline()
    pipe.scheduler = DDIMScheduler()
    with pytest.raises(ValueError, match="StableDiffusion3Pipeline has a DDIMScheduler: .* FlowMatchEulerDiscreteScheduler"):
        family_for(pipe)


def test_image_sizes_that_do_not_fit_the_latent_grid_are_refused():
    family = family_for(build_tiny_flux_pipeline())
    with pytest.raises(ValueError, match="image size 68 x 64: FluxPipeline needs positive multiples of 8 pixels"):
        family.latent_shape(68, 64)
    with pytest.raises(ValueError, match="give both or neither"):
        family.latent_shape(64, None)


@pytest.mark.parametrize("family_name", list(BUILDERS))
def test_short_pxpo_run_with_groups_and_kl(family_name, make_config):
    pipe = BUILDERS[family_name]()
    config = make_config(
        sample={"num_steps": 4, "batch_size": 4, "group_size": 2, "height": 64, "width": 64, "guidance_scale": 3.0},
        train={"batch_size": 4, "kl_coef": 0.1, "learning_rate": 1e-3},
        advantage={"normalization": "group_location"},
        run={"num_epochs": 2},
    )
    trainer = Trainer(config, pipeline=pipe, progress=False)
    metrics = trainer.train()
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    assert all(math.isfinite(m["kl"]) and m["kl"] >= 0 for m in metrics[1:])
    assert metrics[2]["kl"] > 0  # after one update the policy has left the reference
    assert (trainer.run.lora / "pytorch_lora_weights.safetensors").is_file()
    assert isinstance(trainer.pipe, (StableDiffusion3Pipeline, FluxPipeline))
