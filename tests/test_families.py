"""The model-family contract: every supported family passes the same tests (in the manner of diffusers'
PipelineTesterMixin), against independent computations: the diffusers scheduler's own step, the diffusers
pipeline's own sampling loop and latent layout, torch.distributions.Normal, and a fresh pipeline loading the LoRA.

A new family gets a row in FAMILIES and passes this file. Tests of what only one family has say so in a comment;
the step maths on their own (formulas, scheduler options) are in test_sampling.py (DDIM) and test_flow.py (flow SDE).
Shapes: B batch, T steps, C latent channels, h x w latent grid, H x W pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, FluxPipeline, PNDMScheduler

from pxpo.advantages import heatmap_to_latent
from pxpo.families import family_for
from pxpo.losses import ddpo_loss, pxpo_loss
from pxpo.rollout import recompute_log_prob, sample_trajectories
from pxpo.trainer import Trainer
from pxpo.world.architecture import build_tiny_flux_pipeline, build_tiny_pipeline, build_tiny_sd3_pipeline

SIZE = 64  # pixels; every tiny pipeline has a 4 x 16 x 16 latent grid at this size
GRID = (4, 16, 16)
PROMPTS = ["red taxi in traffic", "nature landscape"]


@dataclass(frozen=True)
class Family:
    """One row of the contract: how to build the family's tiny pipeline, and what diffusers calls its settings."""

    name: str
    pipeline_class: str
    build: Callable[[], DiffusionPipeline]
    noise: float  # the policy's noise in training: DDIM's eta, or the flow SDE's noise level
    pipeline_kwargs: Callable[[DiffusionPipeline], dict]  # pipe -> what the diffusers pipeline needs to sample as the family does, deterministically
    # (pipe, the diffusers pipeline's own latents) -> those latents on pxpo's [B, C, h, w] grid, by diffusers' own code
    to_grid: Callable[[DiffusionPipeline, torch.Tensor], torch.Tensor] = lambda pipe, latents: latents
    # (pipe, the denoiser's own output) -> the model output the pipeline steps with, on the grid (None: to_grid)
    output_to_grid: Callable[[DiffusionPipeline, torch.Tensor], torch.Tensor] | None = None
    # pipe -> the diffusers pipeline's default image side in pixels
    native_size: Callable[[DiffusionPipeline], int] = lambda pipe: (
        (getattr(pipe, "default_sample_size", None) or pipe.unet.config.sample_size) * pipe.vae_scale_factor
    )


def flux_to_grid(pipe: DiffusionPipeline, latents: torch.Tensor) -> torch.Tensor:
    """FLUX's packed tokens unpacked by diffusers' own ``_unpack_latents``."""
    return FluxPipeline._unpack_latents(latents, SIZE, SIZE, pipe.vae_scale_factor)


FAMILIES = [
    Family("sd", "StableDiffusionPipeline", build_tiny_pipeline, 1.0, lambda pipe: {"eta": 0.0}),
    # the tiny SD3 pipeline has no T5 encoder: no T5 tokens, as pxpo-tiny-flow was trained
    Family("sd3", "StableDiffusion3Pipeline", build_tiny_sd3_pipeline, 0.7, lambda pipe: {"max_sequence_length": 0}),
    Family("flux", "FluxPipeline", build_tiny_flux_pipeline, 0.7, lambda pipe: {"max_sequence_length": pipe.tokenizer_2.model_max_length},
           flux_to_grid),
    # SDXL: DDIM with eta, as SD (its tiny pipeline ships SDXL's Euler scheduler, rebuilt as DDIM by the family)
    Family("sdxl", "StableDiffusionXLPipeline", lambda: __import__("pxpo.world.tiny_sdxl", fromlist=["_"]).build_tiny_sdxl_pipeline(),
           1.0, lambda pipe: {"eta": 0.0}),
    # Qwen-Image: packed 2 x 2 tokens on a one-frame VAE grid [B, C, 1, h, w]; pxpo's guidance_scale (3.0 in these tests)
    # is the pipeline's true_cfg_scale with the negative prompt " " (the transformer has no guidance embedding)
    Family("qwen-image", "QwenImagePipeline",
           lambda: __import__("pxpo.world.tiny_qwen_image", fromlist=["_"]).build_tiny_qwen_image_pipeline(), 0.7,
           lambda pipe: {"true_cfg_scale": 3.0, "negative_prompt": " "},
           lambda pipe, latents: type(pipe)._unpack_latents(latents, SIZE, SIZE, pipe.vae_scale_factor)[:, :, 0]),
    # FLUX.2 and klein: tokens of 2 x 2-patchified VAE latents [B, (h/2)(w/2), 4C], back on the VAE's grid by diffusers' own
    # _unpack_latents_with_ids and _unpatchify_latents. FLUX.2 [dev]'s guidance_scale is its guidance embedding; the klein
    # base model's is CFG with the empty prompt. Both pad prompts to the tiny tokenizer's 64 tokens, as pxpo does.
    *[Family(name, cls, lambda build=build: getattr(__import__("pxpo.world.tiny_flux2", fromlist=["_"]), build)(), 0.7,
             lambda pipe: {"max_sequence_length": pipe.tokenizer.model_max_length},
             lambda pipe, latents: type(pipe)._unpatchify_latents(type(pipe)._unpack_latents_with_ids(
                 latents, type(pipe)._prepare_latent_ids(torch.zeros(len(latents), 1, *[SIZE // pipe.vae_scale_factor // 2] * 2))
             )))
      for name, cls, build in [("flux2", "Flux2Pipeline", "build_tiny_flux2_pipeline"),
                               ("flux2-klein", "Flux2KleinPipeline", "build_tiny_flux2_klein_pipeline")]],
    # Z-Image: the transformer takes and returns a list of B latents [C, 1, h, w] (the pipeline's own latents are the grid),
    # stacked as the pipeline stacks them, and the pipeline steps with minus its output; the pipeline writes pxpo's guidance
    # scale w as cond + (w - 1)(cond - uncond); its default size is 1024 px (``height or 1024``: no default_sample_size)
    Family("z_image", "ZImagePipeline",
           lambda: __import__("pxpo.world.tiny_z_image", fromlist=["_"]).build_tiny_z_image_pipeline(), 0.7, lambda pipe: {"guidance_scale": 3.0 - 1, "cfg_normalization": False, "cfg_truncation": 1.0,
                              "max_sequence_length": pipe.tokenizer.model_max_length},
           lambda pipe, latents: torch.stack(latents).squeeze(2) if isinstance(latents, list) else latents,
           output_to_grid=lambda pipe, output: -torch.stack(output).squeeze(2), native_size=lambda pipe: 1024),
]


@pytest.fixture(params=FAMILIES, ids=[f.name for f in FAMILIES])
def row(request) -> Family:
    return request.param


@pytest.fixture
def pipe(row) -> DiffusionPipeline:
    """A fresh tiny pipeline of the family (random weights from seed 0)."""
    pipe = row.build()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_random_lora(pipe: DiffusionPipeline, std: float):
    """The pipeline's family with a rank-4 LoRA whose B matrices are drawn (they start at zero: the adapter would
    do nothing); returns the family and the trainable parameters."""
    family = family_for(pipe)
    family.add_lora(rank=4)
    with torch.no_grad():
        for name, p in family.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    return family, [p for p in family.denoiser.parameters() if p.requires_grad]


def sample(pipe_or_family, prompts, noise: float, steps: int = 3, seed: int = 0, guidance_scale: float = 3.0):
    return sample_trajectories(pipe_or_family, prompts, num_steps=steps, guidance_scale=guidance_scale, noise_level=noise,
                               height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(seed))  # fmt: skip


# the family and its sizes ---------------------------------------------------------------------------------------
def test_the_family_is_detected_from_the_pipeline_class(row, pipe):
    family = family_for(pipe)
    assert family.name == row.name and row.pipeline_class in family.pipeline_classes
    assert family.denoiser is getattr(pipe, family.denoiser_name)
    assert family.latent_shape(SIZE, SIZE) == GRID
    # the native size is the diffusers pipeline's default height and width
    assert family.default_size() == (row.native_size(pipe),) * 2
    assert family.latent_shape() == family.latent_shape(*family.default_size())


def test_latent_shape_refuses_sizes_off_the_grid(pipe):
    family = family_for(pipe)
    m = family.size_multiple
    assert family.latent_shape(SIZE + m, SIZE) == (GRID[0], GRID[1] + m // pipe.vae_scale_factor, GRID[2])
    name = type(pipe).__name__
    for height in (SIZE + m // 2, 0, -m):
        with pytest.raises(ValueError, match=f"image size {height} x {SIZE}: {name} needs positive multiples of {m} pixels"):
            family.latent_shape(height, SIZE)
    with pytest.raises(ValueError, match="give both or neither"):
        family.latent_shape(SIZE, None)


def test_unsupported_pipelines_are_refused_with_the_supported_classes():
    class MyPipeline(DiffusionPipeline):
        pass

    expected = ", ".join(sorted({f.pipeline_class for f in FAMILIES}))
    with pytest.raises(ValueError, match=f"cannot train a MyPipeline: supported pipeline classes are {expected}"):
        family_for(MyPipeline())


def test_a_scheduler_that_is_not_the_familys_sampler_is_rebuilt_or_refused(row, pipe):
    """SD v1.4 ships a PNDM scheduler with set_alpha_to_one: a DDIM family (SD, SDXL: its pipeline samples with ``eta``)
    samples with DDIM from its config, without the deterministic last step. A flow family has no other sampler: a DDIM
    scheduler is refused."""
    if "eta" in row.pipeline_kwargs(pipe):
        pipe.scheduler = PNDMScheduler.from_config({**pipe.scheduler.config, "set_alpha_to_one": True})
        family_for(pipe)
        assert isinstance(pipe.scheduler, DDIMScheduler) and not pipe.scheduler.config.set_alpha_to_one
    else:
        pipe.scheduler = DDIMScheduler()
        with pytest.raises(ValueError, match=f"{row.pipeline_class} has a DDIMScheduler: .* FlowMatchEulerDiscreteScheduler"):
            family_for(pipe)


# the policy step ---------------------------------------------------------------------------------------------------
def scheduler_step(scheduler, model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """The diffusers scheduler's own deterministic step: DDIM with eta = 0, or flow matching's Euler step."""
    if isinstance(scheduler, DDIMScheduler):
        return scheduler.step(model_output, t, sample, eta=0.0).prev_sample
    return scheduler.step(model_output, t, sample).prev_sample


def test_the_policy_step_in_the_deterministic_limit_is_the_schedulers_own_step(row, pipe):
    family = family_for(pipe)
    model_output, sample_ = torch.randn(2, *GRID), torch.randn(2, *GRID)
    for i in range(10):
        t = family.set_timesteps(10, GRID)[i]  # (a fresh flow scheduler finds its step index from t)
        reference = scheduler_step(pipe.scheduler, model_output, t, sample_)
        out = family.step(model_output, t, sample_, 1e-6)
        torch.testing.assert_close(out.mean, reference, rtol=1e-5, atol=1e-5)


def test_the_log_prob_is_the_normal_density_of_each_element(row, pipe):
    family = family_for(pipe)
    timesteps = family.set_timesteps(10, GRID)
    model_output, sample_, given = torch.randn(2, *GRID), torch.randn(2, *GRID), torch.randn(2, *GRID)
    for t in timesteps[[0, 4, -1]]:  # the first and the last step included
        drawn = family.step(model_output, t, sample_, row.noise, generator=torch.Generator().manual_seed(1))
        scored = family.step(model_output, t, sample_, row.noise, prev_sample=given)
        for out in (drawn, scored):
            assert out.log_prob.shape == (2, *GRID)
            normal = torch.distributions.Normal(out.mean.double(), out.std.double().expand_as(out.mean))
            torch.testing.assert_close(out.log_prob.double(), normal.log_prob(out.prev_sample.double()), rtol=1e-5, atol=1e-4)
        assert torch.equal(scored.prev_sample, given)


def test_one_timestep_per_sample_gives_what_single_calls_give(row, pipe):
    """(Recomputing log-probabilities batches (sample, step) pairs: each row at its own timestep.)"""
    family = family_for(pipe)
    timesteps = family.set_timesteps(10, GRID)[[0, 4, 9]]
    model_output, sample_, prev = torch.randn(3, *GRID), torch.randn(3, *GRID), torch.randn(3, *GRID)
    batched = family.step(model_output, timesteps, sample_, row.noise, prev_sample=prev)
    for i, t in enumerate(timesteps):
        single = family.step(model_output[i : i + 1], t, sample_[i : i + 1], row.noise, prev_sample=prev[i : i + 1])
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob)
        torch.testing.assert_close(batched.mean[i : i + 1], single.mean)
        assert not torch.equal(single.log_prob, family.step(model_output[i : i + 1], timesteps[i - 1], sample_[i : i + 1], row.noise,
                                                            prev_sample=prev[i : i + 1]).log_prob)  # fmt: skip


def test_drawn_steps_are_distributed_as_the_policys_gaussian(row, pipe):
    family = family_for(pipe)
    t = family.set_timesteps(10, GRID)[3]
    model_output, sample_ = torch.randn(64, *GRID), torch.randn(64, *GRID)
    out = family.step(model_output, t, sample_, row.noise, generator=torch.Generator().manual_seed(0))
    z = (out.prev_sample - out.mean) / out.std  # 65,536 draws of a standard normal: tolerances of about 5 sigma
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    assert abs((z.abs() < 1).float().mean().item() - 0.6827) < 0.01
    again = family.step(model_output, t, sample_, row.noise, generator=torch.Generator().manual_seed(0))
    other = family.step(model_output, t, sample_, row.noise, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.prev_sample, out.prev_sample) and not torch.equal(other.prev_sample, out.prev_sample)  # the seed decides


def test_no_cross_talk_zero_feedback_gives_zero_gradient_to_those_elements(row, pipe):
    """Feedback painted on an 8 x 8 pixel square reaches exactly the 2 x 2 latent cells under it: every other
    element's model output gets exactly zero gradient."""
    family = family_for(pipe)
    t = family.set_timesteps(10, GRID)[2]
    model_output = torch.randn(2, *GRID, requires_grad=True)
    out = family.step(model_output, t, torch.randn(2, *GRID), row.noise, generator=torch.Generator().manual_seed(0))
    heatmaps = torch.zeros(2, SIZE, SIZE)
    heatmaps[:, 16:24, 40:48] = torch.tensor([1.0, -2.0]).view(2, 1, 1)
    advantages = heatmap_to_latent(heatmaps, GRID[1:])
    pxpo_loss(out.log_prob, out.log_prob.detach(), advantages, clip_range=0.2).loss.backward()
    touched = model_output.grad.abs().sum(dim=1) > 0  # [B, h, w]
    expected = torch.zeros(2, *GRID[1:], dtype=torch.bool)
    expected[:, 4:6, 10:12] = True
    assert torch.equal(touched, expected)


# the sampler -------------------------------------------------------------------------------------------------------
def test_sampled_trajectories_have_the_documented_shapes(row, pipe):
    trajectories = sample(pipe, PROMPTS, row.noise, steps=3)
    assert trajectories.latents.shape == (2, 4, *GRID)  # [B, T + 1, C, h, w]: x_T ... x_0
    assert trajectories.log_probs.shape == (2, 3, *GRID)  # [B, T, C, h, w]
    assert trajectories.images.shape == (2, 3, SIZE, SIZE) and 0 <= trajectories.images.min() <= trajectories.images.max() <= 1
    assert trajectories.timesteps.shape == (3,) and trajectories.prompts == PROMPTS and len(trajectories) == 2
    assert torch.isfinite(trajectories.log_probs).all()
    # x_T is the family's initial noise from the same seed
    family = family_for(pipe)
    torch.testing.assert_close(trajectories.latents[:, 0], family.initial_noise(2, GRID, torch.Generator().manual_seed(0)))


def test_recomputed_log_probs_reproduce_the_sampled_ones(row, pipe):
    family = family_for(pipe)
    trajectories = sample(pipe, PROMPTS, row.noise, steps=3)
    rows = torch.tensor([0, 1])
    with torch.no_grad():
        for j in range(3):  # each step as it was sampled (the same batch): bit for bit
            out = recompute_log_prob(pipe, family.denoiser, trajectories, rows, torch.full((2,), j), guidance_scale=3.0, noise_level=row.noise)
            assert torch.equal(out.log_prob, trajectories.log_probs[:, j]), j
        # any (sample, step) pairs in any order, in one batch: the same up to float rounding of other batch shapes
        rows, steps = torch.tensor([1, 0, 1, 0, 1, 0]), torch.tensor([2, 0, 1, 2, 0, 1])
        mixed = recompute_log_prob(pipe, family.denoiser, trajectories, rows, steps, guidance_scale=3.0, noise_level=row.noise)
    torch.testing.assert_close(mixed.log_prob, trajectories.log_probs[rows, steps], rtol=1e-4, atol=1e-3)
    other = sample(pipe, PROMPTS, row.noise, steps=4)  # the scheduler now holds 4 other steps: set back by recompute_log_prob
    with torch.no_grad():
        again = recompute_log_prob(pipe, family.denoiser, trajectories, rows[:2], steps[:2], guidance_scale=3.0, noise_level=row.noise)
    torch.testing.assert_close(again.log_prob, trajectories.log_probs[rows[:2], steps[:2]], rtol=1e-4, atol=1e-3)
    other.timesteps = other.timesteps + 1
    with pytest.raises(ValueError, match="sampled with other timesteps"):
        recompute_log_prob(pipe, family.denoiser, other, rows[:2], steps[:2], guidance_scale=3.0, noise_level=row.noise)


def test_the_deterministic_limit_of_the_sampler_is_the_diffusers_pipeline(row, pipe):
    """With a vanishing noise, the policy is the sampler that the diffusers pipeline runs (DDIM at eta = 0, the flow
    ODE): the same initial noise from the same seed, the same latents after every step (FLUX's unpacked by diffusers'
    own ``_unpack_latents``), the same images."""
    ours = sample(pipe, ["nature landscape"], 1e-7, steps=4, seed=3)
    seen = []
    # (the row's pipeline_kwargs may write the guidance scale the pipeline's own way)
    reference = pipe(prompt="nature landscape", num_inference_steps=4, height=SIZE, width=SIZE, output_type="pt",
                     generator=torch.Generator().manual_seed(3), callback_on_step_end=lambda p, i, t, kw: seen.append(kw["latents"]) or {},
                     **{"guidance_scale": 3.0, **row.pipeline_kwargs(pipe)}).images  # fmt: skip
    assert len(seen) == 4
    for j, latents in enumerate(seen):
        torch.testing.assert_close(ours.latents[:, j + 1], row.to_grid(pipe, latents), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.images, reference.float(), rtol=1e-4, atol=1e-4)


def test_sd_only_the_stochastic_sampler_is_the_diffusers_pipeline_with_eta(tiny_pipe):
    """SD only: DDIM is the one stochastic sampler in diffusers (``eta``); the flow pipelines integrate the ODE.
    With one seed per sample, our draws are the pipeline's draws."""
    pipe = tiny_pipe
    pipe.set_progress_bar_config(disable=True)
    seeds = [3, 4]
    ours = sample_trajectories(pipe, PROMPTS, num_steps=6, guidance_scale=5.0, noise_level=1.0,
                               generator=[torch.Generator().manual_seed(s) for s in seeds])  # fmt: skip
    reference = pipe(PROMPTS, num_inference_steps=6, guidance_scale=5.0, eta=1.0, output_type="pt",
                     generator=[torch.Generator().manual_seed(s) for s in seeds]).images  # fmt: skip
    torch.testing.assert_close(ours.images, reference, rtol=1e-4, atol=1e-4)


def test_the_denoiser_sees_the_pipelines_own_latent_layout(row, pipe):
    """FLUX's transformer takes packed 2 x 2 tokens and returns them; the other denoisers take the grid itself.
    What ``predict`` gives the denoiser, and makes of its output, is diffusers' layout (unpacked by diffusers)."""
    family = family_for(pipe)
    family.set_timesteps(4, GRID)
    calls = []

    def hook(module, args, kwargs, output):
        seen = next(kwargs[name] for name in ("sample", "hidden_states", "x") if name in kwargs)  # the latents argument
        calls.append((seen, output.sample if hasattr(output, "sample") else output[0]))

    handle = family.denoiser.register_forward_hook(hook, with_kwargs=True)
    latents = torch.randn(2, *GRID)
    with torch.no_grad():
        prediction = family.predict(family.denoiser, latents, torch.full((2,), 500.0), family.encode_prompts(PROMPTS, 1.0), 1.0)
    handle.remove()
    ((seen, output),) = calls  # no guidance: one call
    torch.testing.assert_close(row.to_grid(pipe, seen), latents, rtol=0, atol=0)
    torch.testing.assert_close(prediction, (row.output_to_grid or row.to_grid)(pipe, output), rtol=0, atol=0)


# gradients and LoRA ------------------------------------------------------------------------------------------------
def test_pxpo_gradient_equals_the_scalar_ddpo_gradient_on_constant_maps(row, pipe):
    family, params = with_random_lora(pipe, std=0.02)
    trajectories = sample(family, ["red taxi in traffic"] * 3, row.noise, steps=3, seed=1)
    advantages = torch.tensor([1.2, -0.4, 0.5])
    rows, steps = torch.arange(3), torch.tensor([0, 1, 2])
    step = recompute_log_prob(family, family.denoiser, trajectories, rows, steps, guidance_scale=3.0, noise_level=row.noise)
    old = trajectories.log_probs[rows, steps]
    pxpo = pxpo_loss(step.log_prob, old, advantages.reshape(3, 1, 1, 1).expand(3, 1, *GRID[1:]), clip_range=0.2)
    ddpo = ddpo_loss(step.log_prob.mean(dim=(1, 2, 3)), old.mean(dim=(1, 2, 3)), advantages, clip_range=1e-4)
    g_pxpo = torch.autograd.grad(pxpo.loss, params, retain_graph=True)
    g_ddpo = torch.autograd.grad(ddpo.loss, params)
    assert max(g.abs().max() for g in g_ddpo) > 0
    for a, b in zip(g_pxpo, g_ddpo):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_lora_round_trip_through_the_pipeline_classs_own_loader(row, pipe, tmp_path):
    family, _ = with_random_lora(pipe, std=0.05)
    family.save_lora(family.denoiser, tmp_path / "lora")
    fresh = row.build()
    fresh_family = family_for(fresh)
    latents, t = torch.randn(1, *GRID), torch.tensor([500.0])
    conditioning = family.encode_prompts(["nature landscape"], guidance_scale=3.0)
    with torch.no_grad():
        before = fresh_family.predict(fresh_family.denoiser, latents, t, conditioning, 3.0)
        fresh.load_lora_weights(str(tmp_path / "lora"))  # diffusers' loader of this pipeline class
        after = fresh_family.predict(fresh_family.denoiser, latents, t, conditioning, 3.0)
        trained = family.predict(family.denoiser, latents, t, conditioning, 3.0)
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(after, trained, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # a gradient step on the denoiser
def test_one_on_policy_step_moves_log_probs_the_way_the_advantages_point(row, pipe):
    """A step of size lr along the normalised PXPO gradient raises the advantage-weighted mean log-probability by
    lr * |gradient| to first order (the loss is minus that mean at ratio 1), and the elements with advantage 0 have
    no part in the step."""
    family, params = with_random_lora(pipe, std=0.01)
    trajectories = sample(family, ["nature landscape"] * 2, row.noise, steps=4, guidance_scale=1.0)
    rows, steps = torch.tensor([0, 1]), torch.tensor([1, 2])
    advantages = torch.zeros(2, 1, *GRID[1:])
    advantages[..., :6], advantages[..., 10:] = 1.0, -1.0  # columns 6-9: no feedback

    def log_probs():
        return recompute_log_prob(family, family.denoiser, trajectories, rows, steps, guidance_scale=1.0, noise_level=row.noise).log_prob

    before = log_probs()
    grads = torch.autograd.grad(pxpo_loss(before, before.detach(), advantages, clip_range=10.0).loss, params, retain_graph=True)
    unfed = (advantages == 0).expand_as(before)
    without = torch.where(unfed, before.detach(), before)  # the unfed elements' log-probs cut off from the denoiser
    grads_without = torch.autograd.grad(pxpo_loss(without, before.detach(), advantages, clip_range=10.0).loss, params)
    for a, b in zip(grads, grads_without):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    lr, norm = 1e-3, torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g / norm
        change = log_probs() - before.detach()
    gain = (advantages.expand_as(change) * change).mean()
    assert gain > 0
    torch.testing.assert_close(gain, lr * norm, rtol=0.05, atol=0)


@pytest.mark.slow  # trains
def test_a_short_pxpo_run_with_groups_and_kl(row, pipe, make_config, phases):
    config = make_config(
        sample={"num_steps": 3, "batch_size": 4, "group_size": 2, "height": SIZE, "width": SIZE, "guidance_scale": 3.0,
                "eta": row.noise, "noise_level": row.noise},
        train={"batch_size": 4, "kl_coef": 0.1, "learning_rate": 1e-3},
        advantage={"normalization": "group_location"},
        eval={"seeds": [0]},
        run={"num_epochs": 2},
    )  # fmt: skip
    trainer = Trainer(config, pipeline=pipe, progress=False, callbacks=[phases])
    metrics = trainer.train()
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    # the reference policy is the base model (the LoRA off): no KL before the first optimizer step, some after it
    assert metrics[1]["kl"] == 0 and metrics[2]["kl"] > 0
    for epoch in (1, 2):  # each group of 2 images, at each latent location: advantages -1 and +1, or 0 and 0 (a tie)
        advantages = phases.results["advantage", epoch]
        assert advantages.shape == (4, 1, *GRID[1:])
        groups = advantages.reshape(2, 2, *GRID[1:])
        # the rewards on the latent grid, in float64: where the two images differ clearly, exactly -1 and +1; at a near-tie
        # float32 rounding of the mean is divided by a tiny std, so only the signs and |a| <= 1 are certain there
        rewards = heatmap_to_latent(phases.results["reward", epoch].heatmaps.double(), GRID[1:]).reshape(2, 2, *GRID[1:])
        clear = (rewards[:, 0] - rewards[:, 1]).abs() > 1e-4
        expected = torch.sign(rewards - rewards.mean(dim=1, keepdim=True)).float()
        torch.testing.assert_close(groups[clear.unsqueeze(1).expand_as(groups)], expected[clear.unsqueeze(1).expand_as(groups)],
                                   rtol=0, atol=1e-3)  # fmt: skip
        assert clear.any() and torch.all(groups.abs() <= 1 + 1e-3) and torch.all(groups[:, 0] * groups[:, 1] <= 0)
    assert (trainer.run.lora / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow  # trains
def test_pxpo_train_and_sample_take_a_saved_folder_of_the_family(row, pipe, tmp_path, quick_toml, capsys):
    """What a user does with a model folder: ``pxpo train`` on it (one epoch), then ``pxpo sample`` of the run."""
    from PIL import Image

    from pxpo.cli import main

    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    config = quick_toml("folder", model={"pretrained": str(folder)}, run={"num_epochs": 1},
                        sample={"num_steps": 2, "batch_size": 2, "group_size": 2, "height": SIZE, "width": SIZE,
                                "eta": row.noise, "noise_level": row.noise})  # fmt: skip
    assert main(["train", config, "--no-progress"]) == 0, capsys.readouterr().err
    run, out = tmp_path / "runs" / "folder", tmp_path / "s.png"
    size = ["--height", str(SIZE), "--width", str(SIZE), "--num-steps", "2"]
    assert main(["sample", str(run), "--prompt", "nature landscape", "--seed", "0", "1", "--out", str(out), *size]) == 0
    assert Image.open(out).size == (2 * SIZE, SIZE)  # two seeds side by side
    assert main(["sample", str(folder), "--prompt", "nature landscape", "--out", str(out), *size]) == 0  # the base model
    assert Image.open(out).size == (SIZE, SIZE)
