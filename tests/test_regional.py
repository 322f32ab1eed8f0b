"""train.regional_adapter: the LoRA changes the prediction only where the reward judges the image.

Mechanism tests: the output is the base model's exactly outside the region and the adapted one inside, checked
against the two computed separately; gradients come from the region only; in single-image mode the region is the
union of the judged maps, kept in checkpoints and beside the LoRA; over many images it is what the reward judges in
the base model's image from the same noise; sampling and scoring agree; ``pxpo sample`` applies it. What it buys is measured by
benchmarks/locality.py (docs/benchmarks/locality.md).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from pxpo.advantages import heatmap_to_latent
from pxpo.config import ConfigError, validate_config
from pxpo.families import family_for
from pxpo.hooks import Callback
from pxpo.region import REGION_FILE, JudgedRegion, fork, run_region, sample_where_judged
from pxpo.rollout import Policy, adapters_off, policy_output, recompute_log_prob, sample_trajectories, velocity_on_forward_process


@pytest.fixture(scope="module")
def adapted():
    """The tiny pipeline's family with a LoRA whose B matrices are not zero (so adapted != base); built once for the
    module (no test changes its weights; the ones that switch the adapters off switch them on again)."""
    from pxpo.world.architecture import build_tiny_pipeline

    family = family_for(build_tiny_pipeline(seed=0))
    family.add_lora(rank=4)
    with torch.no_grad():
        for name, parameter in family.denoiser.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return family


def _inputs(family, batch=2):
    conditioning = family.encode_prompts(["red taxi in traffic"] * batch, 5.0)
    timesteps = family.set_timesteps(4, family.latent_shape(None, None))
    latents = torch.randn(batch, *family.latent_shape(None, None), generator=torch.Generator().manual_seed(2))
    return latents, timesteps[1].expand(batch), conditioning


def _both(family, latents, timesteps, conditioning):
    """The adapted and the base output, computed apart (the independent computation)."""
    with torch.no_grad():
        adapted = family.predict(family.denoiser, latents, timesteps, conditioning, 5.0)
        with adapters_off(family.denoiser):
            base = family.predict(family.denoiser, latents, timesteps, conditioning, 5.0)
    return adapted, base


def test_the_output_is_the_base_models_outside_the_region_and_the_adapted_one_inside(adapted):
    latents, timesteps, conditioning = _inputs(adapted)
    lora, base = _both(adapted, latents, timesteps, conditioning)
    assert (lora - base).abs().amax() > 1e-3  # the LoRA does change the output
    region = torch.zeros(1, 1, 16, 16)
    region[..., 2:9, 4:12] = 1.0
    region[..., 12, 0] = 0.25  # a cell judged in part
    with torch.no_grad():
        output = policy_output(adapted, adapted.denoiser, latents, timesteps, conditioning, 5.0, region)
    inside = region.expand_as(output) == 1
    outside = region.expand_as(output) == 0
    torch.testing.assert_close(output[outside], base[outside], rtol=0, atol=0)
    torch.testing.assert_close(output[inside], lora[inside], rtol=0, atol=1e-6)
    torch.testing.assert_close(output[..., 12, 0], 0.75 * base[..., 12, 0] + 0.25 * lora[..., 12, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_an_empty_region_is_the_base_model_and_a_full_one_the_adapted_model(adapted, fill):
    latents, timesteps, conditioning = _inputs(adapted)
    lora, base = _both(adapted, latents, timesteps, conditioning)
    with torch.no_grad():
        output = policy_output(adapted, adapted.denoiser, latents, timesteps, conditioning, 5.0, torch.full((1, 1, 16, 16), fill))
    torch.testing.assert_close(output, lora if fill else base, rtol=0, atol=0)
    assert torch.equal(_both(adapted, latents, timesteps, conditioning)[0], lora)  # the adapters are on again


def test_a_region_off_the_latent_grid_is_refused(adapted):
    latents, timesteps, conditioning = _inputs(adapted)
    with pytest.raises(ValueError, match=r"a region of shape \(1, 1, 8, 8\) for latents of shape \(2, 4, 16, 16\)"):
        policy_output(adapted, adapted.denoiser, latents, timesteps, conditioning, 5.0, torch.full((1, 1, 8, 8), 0.5))


def test_gradients_come_only_from_the_region(adapted):
    """A loss on the outside cells alone gives no gradient; on the inside it equals the adapted output's own gradient."""
    latents, timesteps, conditioning = _inputs(adapted, batch=1)
    region = torch.zeros(1, 1, 16, 16)
    region[..., :8, :] = 1.0
    params = [p for n, p in adapted.denoiser.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    weights = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))

    def grads(loss):
        return torch.autograd.grad(loss, params, allow_unused=True)

    output = policy_output(adapted, adapted.denoiser, latents, timesteps, conditioning, 5.0, region)
    outside = grads((output * weights * (1 - region)).sum())
    assert all(g is None or torch.count_nonzero(g) == 0 for g in outside)
    output = policy_output(adapted, adapted.denoiser, latents, timesteps, conditioning, 5.0, region)
    inside = grads((output * weights * region).sum())
    direct = grads((adapted.predict(adapted.denoiser, latents, timesteps, conditioning, 5.0) * weights * region).sum())
    assert any(torch.count_nonzero(g) for g in inside)
    for a, b in zip(inside, direct):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_region_is_the_union_of_the_judged_maps_on_the_latent_grid():
    region = JudgedRegion((16, 16))
    torch.testing.assert_close(region.latent(), torch.zeros(1, 1, 16, 16))  # nothing judged yet: the base model
    first, second = torch.zeros(1, 64, 64, dtype=torch.bool), torch.zeros(1, 64, 64, dtype=torch.bool)
    first[:, 0:8, 0:6] = True  # cells [0:2, 0:1] full, [0:2, 1] half
    second[:, 32:64, 32:64] = True
    region.add(first, (64, 64))
    region.add(second, (64, 64))
    torch.testing.assert_close(region.latent(), heatmap_to_latent((first | second).float(), (16, 16)))
    assert region.latent()[0, 0, 0, 1] == 0.5
    region.add(None, (64, 64))  # a reward that judges every pixel
    torch.testing.assert_close(region.latent(), torch.ones(1, 1, 16, 16))


def test_a_region_refuses_maps_of_another_size_or_of_several_images():
    region = JudgedRegion((16, 16))
    region.add(torch.ones(1, 64, 64, dtype=torch.bool), (64, 64))
    with pytest.raises(ValueError, match=r"a judged map of \(32, 32\) pixels for a region of \(64, 64\)"):
        region.add(torch.ones(1, 32, 32, dtype=torch.bool), (32, 32))
    with pytest.raises(ValueError, match="judged maps of 2 images: a region belongs to one image"):
        region.add(torch.ones(2, 64, 64, dtype=torch.bool), (64, 64))


def test_the_region_round_trips_through_its_png_and_its_checkpoint_tensors(tmp_path):
    region = JudgedRegion((16, 16))
    judged = torch.zeros(1, 64, 64, dtype=torch.bool)
    judged[:, 10:30, 5:50] = True
    region.add(judged, (64, 64))
    region.save_png(tmp_path, (64, 64))
    assert torch.equal(JudgedRegion.from_png(tmp_path / REGION_FILE, (16, 16)).pixels, judged[0])
    restored = JudgedRegion((16, 16))
    restored.load(region.tensors())
    assert torch.equal(restored.pixels, judged[0])
    assert JudgedRegion((16, 16)).tensors() == {}  # nothing judged: nothing to keep


def test_a_region_never_judged_acts_nowhere_and_a_missing_or_bad_png_is_refused(tmp_path):
    JudgedRegion((16, 16)).save_png(tmp_path, (64, 64))  # before any stroke: all black
    torch.testing.assert_close(run_region(tmp_path, (16, 16), None), torch.zeros(1, 1, 16, 16))
    (tmp_path / REGION_FILE).unlink()
    with pytest.raises(ValueError, match="region.png' is missing: the run's LoRA acts only where its image was judged"):
        run_region(tmp_path, (16, 16), None)
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / REGION_FILE)
    with pytest.raises(ValueError, match="has grey pixels: a region is black"):
        run_region(tmp_path, (16, 16), None)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / REGION_FILE)
    with pytest.raises(ValueError, match="is a RGB image: a region is a black-and-white"):
        run_region(tmp_path, (16, 16), None)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / REGION_FILE)
    with pytest.raises(ValueError, match="is the region of a 64 x 64 image: sample at that size \\(got 128 x 128\\)"):
        run_region(tmp_path, (32, 32), (128, 128))


def test_the_setting_needs_lora_and_a_person_rewards_single_image_mode():
    with pytest.raises(ConfigError, match="train.regional_adapter = true needs model.lora = true"):
        validate_config({"model": {"lora": False}, "train": {"regional_adapter": True}})
    with pytest.raises(ConfigError, match="reward.name = 'painted' needs single-image mode"):
        validate_config({"train": {"regional_adapter": True}, "reward": {"name": "painted"}})


def test_adapters_off_blocks_nest(adapted):
    """policy_output switches the adapters off inside; inside an outer block they stay off after it."""
    latents, timesteps, conditioning = _inputs(adapted)
    lora, base = _both(adapted, latents, timesteps, conditioning)
    with torch.no_grad(), adapters_off(adapted.denoiser):
        policy_output(adapted, adapted.denoiser, latents, timesteps, conditioning, 5.0, torch.full((1, 1, 16, 16), 0.5))
        torch.testing.assert_close(adapted.predict(adapted.denoiser, latents, timesteps, conditioning, 5.0), base, rtol=0, atol=0)
    assert torch.equal(_both(adapted, latents, timesteps, conditioning)[0], lora)


@pytest.mark.slow
def test_a_session_keeps_its_region_through_checkpoints_and_pxpo_sample_applies_it(tmp_path):
    """Single-image training on a painted rectangle: the region is that rectangle, saved in the checkpoint and as
    lora/region.png; a resumed trainer restores it; ``pxpo sample RUN`` without region.png samples the base model."""
    from pxpo.app.sessions import session_config
    from pxpo.cli import main
    from pxpo.trainer import Trainer

    folder = tmp_path / "s"
    config = session_config("tiny-random", "nature landscape", 3, folder)
    assert config.train.regional_adapter and config.train.step_window == [10, 20]  # the app's default
    values = np.zeros((64, 64), np.float32)
    values[8:24, 16:48] = -2.0
    trainer = Trainer(config, run_dir=folder, progress=False)
    trainer.begin()
    record = trainer.step(1, metadata={"painted": values})
    assert record["grad_norm"] > 0  # the first stroke trains
    expected = heatmap_to_latent(torch.from_numpy(values != 0)[None].float(), (16, 16))
    torch.testing.assert_close(trainer.region.latent(), expected)
    assert (trainer.run.checkpoint_path(1) / "region.safetensors").is_file()
    png = np.asarray(Image.open(trainer.run.lora / REGION_FILE))
    assert np.array_equal(png == 255, values != 0)

    resumed = Trainer(config, run_dir=folder, resume=True, progress=False)
    torch.testing.assert_close(resumed.region.latent(), expected)

    args = ["sample", str(folder), "--prompt", "nature landscape", "--seed", "5", "--num-steps", "20", "--eta", "0.3"]
    assert main([*args, "--out", str(tmp_path / "regional.png")]) == 0
    JudgedRegion((16, 16)).save_png(trainer.run.lora, (64, 64))  # never judged: the LoRA acts nowhere
    assert main([*args, "--out", str(tmp_path / "nowhere.png")]) == 0
    assert main(["sample", "tiny-random", *args[2:], "--out", str(tmp_path / "base.png")]) == 0
    regional, nowhere, base = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("regional", "nowhere", "base"))
    assert np.array_equal(nowhere, base) and not np.array_equal(regional, base)


def _sampler(family, prompts):
    def sample(generator, region):
        return sample_trajectories(family, prompts, num_steps=4, guidance_scale=5.0, noise_level=0.8, generator=generator, region=region)

    return sample


@pytest.mark.slow  # several sampling passes
def test_each_sample_acts_where_the_base_models_image_from_the_same_noise_was_judged(adapted):
    """sample_where_judged: the judge sees the base model's images (the LoRA off) from the same noise, and the policy then
    samples from that noise with each sample's own region; the generators end as after one sampling pass."""
    prompts = ["red taxi in traffic", "nature landscape"]
    seen = []

    def judge(base):
        seen.append(base.images)
        judged = torch.zeros(2, 64, 64, dtype=torch.bool)
        judged[0, :32] = True  # the first image's top half, the second's left quarter
        judged[1, :, :16] = True
        return judged

    generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
    trajectories = sample_where_judged(_sampler(adapted, prompts), generators, judge, (16, 16))
    with adapters_off(adapted.denoiser):
        base = _sampler(adapted, prompts)([torch.Generator().manual_seed(s) for s in (5, 6)], None)
    torch.testing.assert_close(seen[0], base.images, rtol=0, atol=0)
    expected = torch.zeros(2, 1, 16, 16)
    expected[0, :, :8] = expected[1, :, :, :4] = 1.0
    torch.testing.assert_close(trajectories.region, expected)
    direct = _sampler(adapted, prompts)([torch.Generator().manual_seed(s) for s in (5, 6)], expected)
    torch.testing.assert_close(trajectories.latents, direct.latents, rtol=0, atol=0)
    assert not torch.equal(trajectories.images, base.images)
    once = [torch.Generator().manual_seed(s) for s in (5, 6)]
    _sampler(adapted, prompts)(once, None)
    assert all(torch.equal(torch.randn(3, generator=a), torch.randn(3, generator=b)) for a, b in zip(generators, once))


def test_scoring_a_regional_trajectory_gives_back_its_sampled_log_probs(adapted):
    """Sampling and scoring agree: recompute_log_prob reads each sample's region from the trajectories."""
    region = torch.zeros(2, 1, 16, 16)
    region[0, :, 3:11] = 1.0
    region[1, :, :, 5:9] = 0.5
    trajectories = _sampler(adapted, ["red taxi in traffic"] * 2)([torch.Generator().manual_seed(s) for s in (1, 2)], region)
    rows, steps = torch.tensor([0, 1, 1]), torch.tensor([0, 2, 3])
    with torch.no_grad():
        scored = recompute_log_prob(adapted, adapted.denoiser, trajectories, rows, steps, guidance_scale=5.0, noise_level=0.8)
    torch.testing.assert_close(scored.log_prob, trajectories.log_probs[rows, steps], rtol=0, atol=1e-3)
    reference = Policy(adapted, adapted.denoiser, 5.0, 0.8).reference_log_prob(trajectories, rows, steps)
    with torch.no_grad(), adapters_off(adapted.denoiser):
        base = recompute_log_prob(adapted, adapted.denoiser, trajectories, rows, steps, guidance_scale=5.0, noise_level=0.8, regional=False)
    torch.testing.assert_close(reference.log_prob, base.log_prob, rtol=0, atol=0)  # the reference: the base model everywhere
    trajectories.region = None  # scored as if the LoRA acted everywhere: not what was sampled
    with torch.no_grad():
        everywhere = recompute_log_prob(adapted, adapted.denoiser, trajectories, rows, steps, guidance_scale=5.0, noise_level=0.8)
    assert (everywhere.log_prob - trajectories.log_probs[rows, steps]).abs().amax() > 1e-2


def test_fork_copies_generators_and_refuses_the_global_one():
    generator = torch.Generator().manual_seed(4)
    copy = fork(generator)
    assert torch.equal(torch.randn(3, generator=copy), torch.randn(3, generator=generator))
    with pytest.raises(ValueError, match="needs a generator"):
        fork(None)


@pytest.mark.slow
def test_a_run_over_many_images_acts_where_its_reward_judges_each_base_image(make_config, tmp_path):
    """Grouped training with a reward that judges one class: every epoch's trajectories carry the region the reward
    judged on the base model's images; evaluation and pxpo sample run the same two passes."""
    from pxpo.cli import main
    from pxpo.rewards import build_reward
    from pxpo.trainer import Trainer

    reward = {"name": "colour_channel", "kwargs": {"channel": "blue", "sign": -1.0, "classes": ["sky"]}}
    config = make_config(model={"pretrained": "tiny-random"}, sample={"num_steps": 4, "batch_size": 4, "prompts": ["nature landscape"]},
                         train={"batch_size": 4, "regional_adapter": True}, reward=reward, run={"num_epochs": 1})  # fmt: skip
    regions = []

    class Keep(Callback):
        def on_phase_end(self, trainer, phase, epoch, result):
            if phase == "sample":
                regions.append((result.region.clone(), result))

    trainer = Trainer(config, progress=False, callbacks=[Keep()])
    trainer.train()
    region, trajectories = regions[0]
    with torch.no_grad(), adapters_off(trainer.family.denoiser):
        base = trainer.schedule.sample(1, lambda prompts, generator, **kw: _sampler_like(trainer, prompts, generator, kw))
    judged = build_reward(**{k: v for k, v in reward.items()})(base.images, base.prompts, base.metadata).judged
    torch.testing.assert_close(region, heatmap_to_latent(judged.float(), (16, 16)))
    assert 0 < region.mean() < 1  # the reward judged some of each batch, not all
    out = tmp_path / "sampled.png"
    assert main(["sample", str(trainer.run.path), "--prompt", "nature landscape", "--seed", "1", "--num-steps", "4", "--out", str(out)]) == 0
    assert out.is_file()


def _sampler_like(trainer, prompts, generator, kw):
    cfg = trainer.config.sample
    return sample_trajectories(trainer.family, prompts, num_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale,
                               noise_level=trainer.policy.noise_level, generator=generator, metadata=kw.get("metadata"))  # fmt: skip


@pytest.mark.slow  # several sampling passes
def test_the_velocity_on_the_forward_process_acts_in_each_samples_region():
    """Forward-process algorithms (AWM) read the trajectories' regions too: base outside, adapted inside."""
    from pxpo.world.architecture import build_tiny_sd3_pipeline

    family = family_for(build_tiny_sd3_pipeline())
    family.add_lora(rank=4)
    with torch.no_grad():
        for name, parameter in family.denoiser.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    region = torch.zeros(2, 1, 16, 16)
    region[0, :, :8] = 1.0
    trajectories = sample_trajectories(family, ["red taxi in traffic"] * 2, num_steps=3, guidance_scale=1.0, noise_level=0.7,
                                       generator=torch.Generator().manual_seed(0), region=region)  # fmt: skip
    rows, steps, noise = torch.tensor([0, 1]), torch.tensor([1, 1]), torch.randn(2, *trajectories.latents.shape[2:])
    with torch.no_grad():
        regional, _ = velocity_on_forward_process(family, family.denoiser, trajectories, rows, steps, noise, guidance_scale=1.0)
        everywhere, _ = velocity_on_forward_process(family, family.denoiser, trajectories, rows, steps, noise, guidance_scale=1.0, regional=False)
        with adapters_off(family.denoiser):
            base, _ = velocity_on_forward_process(family, family.denoiser, trajectories, rows, steps, noise, guidance_scale=1.0, regional=False)
    inside = region.expand_as(regional).bool()
    torch.testing.assert_close(regional[inside], everywhere[inside], rtol=0, atol=1e-6)
    torch.testing.assert_close(regional[~inside], base[~inside], rtol=0, atol=0)
    assert (everywhere - base).abs().amax() > 1e-3
