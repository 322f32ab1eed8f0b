"""sample.sde_window: only a window of denoising steps is stochastic, stored and trained; the others follow the
sampler's deterministic step (DDIM at eta = 0, the flow ODE). Windows are fixed, drawn per group, or sliding."""

import pytest
import torch

from pxpo.config import ConfigError, validate_config
from pxpo.families import family_for
from pxpo.rollout import recompute_log_prob, sample_trajectories
from pxpo.schedule import training_batches
from pxpo.windows import sde_window_starts
from pxpo.world.architecture import build_tiny_pipeline, build_tiny_sd3_pipeline

BUILDERS = {"sd": (build_tiny_pipeline, 1.0, {"eta": 0.0}), "sd3": (build_tiny_sd3_pipeline, 0.7, {"max_sequence_length": 0})}
PROMPTS = ["red taxi in traffic", "nature landscape", "red taxi in traffic"]


def _config(**sample):
    return validate_config({"sample": {"num_steps": 6, "batch_size": 4, **sample}, "train": {"batch_size": 2}})


def _sample(family, noise, window=None, seeds=(0, 1, 2), steps=6, prompts=PROMPTS, initial_noise=None):
    return sample_trajectories(family, prompts[: len(seeds)], num_steps=steps, guidance_scale=3.0, noise_level=noise, height=64, width=64,
                               generator=[torch.Generator().manual_seed(s) for s in seeds], sde_window=window,
                               initial_noise=initial_noise)  # fmt: skip


@pytest.mark.parametrize("name", BUILDERS)
def test_a_window_of_every_step_is_todays_sampler_exactly(name):
    build, noise, _ = BUILDERS[name]
    family = family_for(build())
    plain, whole = _sample(family, noise), _sample(family, noise, (torch.zeros(3, dtype=torch.long), 6))
    for field in ("latents", "log_probs", "images"):
        assert torch.equal(getattr(plain, field), getattr(whole, field)), field
    rows, steps = torch.tensor([0, 1, 2, 0]), torch.tensor([5, 0, 3, 2])
    with torch.no_grad():
        a = recompute_log_prob(family, family.denoiser, plain, rows, steps, guidance_scale=3.0, noise_level=noise)
        b = recompute_log_prob(family, family.denoiser, whole, rows, steps, guidance_scale=3.0, noise_level=noise)
    assert torch.equal(a.log_prob, b.log_prob)


@pytest.mark.parametrize("name", BUILDERS)
def test_an_empty_window_is_the_diffusers_pipelines_deterministic_sampler(name):
    """Every step deterministic: the images are the diffusers pipeline's own (DDIM at eta = 0, the flow ODE)."""
    build, noise, kwargs = BUILDERS[name]
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    ours = _sample(family_for(pipe), noise, (torch.tensor([2]), 0), seeds=(3,), steps=4, prompts=["nature landscape"])
    reference = pipe("nature landscape", num_inference_steps=4, guidance_scale=3.0, height=64, width=64, output_type="pt",
                     generator=torch.Generator().manual_seed(3), **kwargs).images  # fmt: skip
    torch.testing.assert_close(ours.images, reference.float(), rtol=1e-4, atol=1e-4)
    assert ours.latents.shape[1] == 1 and ours.log_probs.shape[1] == 0  # nothing stochastic stored


@pytest.mark.parametrize("name", BUILDERS)
def test_only_the_window_is_stochastic_and_stored_each_sample_on_its_own(name):
    """Samples with windows at 1..2, 3..4 and 0..1 in one batch: each stores its window's 3 states and 2 log-probs,
    equal to sampling it alone; outside its window a sample follows the deterministic step (the same with other noise)."""
    build, noise, _ = BUILDERS[name]
    family = family_for(build())
    starts = torch.tensor([1, 3, 0])
    mixed = _sample(family, noise, (starts, 2))
    assert mixed.latents.shape[:2] == (3, 3) and mixed.log_probs.shape[:2] == (3, 2)
    assert torch.equal(mixed.step_of(torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0])), torch.tensor([2, 4, 0]))
    for i, seed in enumerate((0, 1, 2)):
        alone = _sample(family, noise, (starts[i : i + 1], 2), seeds=(seed,), prompts=PROMPTS[i:])
        torch.testing.assert_close(mixed.latents[i], alone.latents[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mixed.images[i], alone.images[0], rtol=1e-5, atol=1e-5)
    full = _sample(family, noise)  # the same seeds, every step stochastic
    x_T = family.initial_noise(3, (4, 16, 16), [torch.Generator().manual_seed(s) for s in (0, 1, 2)])
    again = _sample(family, noise, (starts, 2), seeds=(5, 6, 7), initial_noise=x_T)  # the same x_T, other noise in the steps:
    other = _sample(family, noise, (starts, 2), seeds=(7, 8, 9), initial_noise=x_T)  # the deterministic steps agree
    assert torch.equal(again.latents[1, 0], other.latents[1, 0])  # sample 1: steps 0-2 deterministic from the same x_T
    assert not torch.equal(again.latents[1, 1], other.latents[1, 1])  # its first stochastic step differs
    assert not torch.equal(mixed.latents[1, 0], full.latents[1, 3])  # the SDE would have been elsewhere by step 3
    with torch.no_grad():  # the recorded window steps score as sampled, each at its own denoising step
        rows, steps = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 1, 0])
        scored = recompute_log_prob(family, family.denoiser, mixed, rows, steps, guidance_scale=3.0, noise_level=noise)
    torch.testing.assert_close(scored.log_prob, mixed.log_probs[rows, steps], rtol=1e-4, atol=1e-3)


def test_training_steps_are_the_windows_stored_steps():
    config = _config(sde_window=[2, 5])
    assert config.sde_steps == 3 and config.step_range == (0, 3) and config.num_train_timesteps == 3
    steps = torch.cat([call.steps for call in training_batches(4, config, torch.Generator().manual_seed(0))])
    assert sorted(steps.tolist()) == sorted([0, 1, 2] * 4)  # every stored step of every sample once: no ODE step trained


def test_window_schedules():
    fixed = _config(sde_window=[1, 3])
    assert sde_window_starts(_config(), 4, [0, 0]) is None
    starts, length = sde_window_starts(fixed, 4, [0, 0, 1, 1])
    assert length == 2 and starts.tolist() == [1, 1, 1, 1]
    sliding = _config(sde_window=[1, 3], sde_window_schedule="sliding", sde_window_shift_every=2)
    # 5 positions (0..4) for 2 steps of 6; one step later every 2 epochs, from the configured start, wrapping around
    assert [int(sde_window_starts(sliding, e, [0])[0][0]) for e in range(1, 12)] == [1, 1, 2, 2, 3, 3, 4, 4, 0, 0, 1]
    random = _config(sde_window=[1, 3], sde_window_schedule="random")
    groups = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    drawn = [sde_window_starts(random, e, groups)[0] for e in range(1, 6)]
    for starts in drawn:
        assert torch.equal(starts[0::2], starts[1::2]) and starts.min() >= 0 and starts.max() <= 4  # a group shares its window
    assert len({tuple(s.tolist()) for s in drawn}) > 1  # drawn anew each epoch ...
    assert torch.equal(sde_window_starts(random, 3, groups)[0], drawn[2])  # ... from the epoch's seed (a resumed run repeats)
    assert sde_window_starts(random, None, groups)[0].tolist() == [1] * 12  # evaluation: the configured window


@pytest.mark.parametrize(
    "sample, train, message",
    [
        ({"sde_window": [4, 7]}, {}, r"sample.sde_window = \[4, 7\]: expected \[start, end\] with 0 <= start <= end <= sample.num_steps = 6"),
        ({"sde_window": [3, 2]}, {}, r"expected \[start, end\]"),
        ({"sde_window": [1]}, {}, r"expected \[start, end\]"),
        ({"sde_window": [2, 2]}, {}, r"sample.sde_window = \[2, 2\] is empty .* train.algorithm = 'pxpo' trains on the stochastic steps"),
        ({"sde_window": [1, 3]}, {"step_window": [3, 6]}, r"sample.sde_window = \[1, 3\] and train.step_window = \[3, 6\]: set one"),
        ({"sde_window_schedule": "random"}, {}, r"sample.sde_window_schedule = 'random' needs a sample.sde_window"),
        ({"sde_window": [1, 3], "sde_window_shift_every": 0}, {}, r"sample.sde_window_shift_every: Input should be greater than 0"),
    ],
)
def test_bad_windows_are_refused_in_one_line(sample, train, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"sample": {"num_steps": 6, **sample}, "train": train})


def test_an_empty_window_serves_a_forward_process_algorithm():
    config = validate_config({"sample": {"num_steps": 6, "sde_window": [2, 2]}, "train": {"algorithm": "pxawm"}})
    assert config.sde_steps == 0 and config.step_range == (0, 6)  # it trains on the sampler's timesteps, not stored steps


@pytest.mark.slow  # trains
def test_a_run_with_a_random_window_trains_only_window_steps(make_config, phases):
    from pxpo.trainer import Trainer

    config = make_config(model={"pretrained": "tiny-random-sd3"},
                         sample={"num_steps": 4, "batch_size": 4, "group_size": 2, "height": 64, "width": 64, "sde_window": [0, 2],
                                 "sde_window_schedule": "random"},
                         train={"batch_size": 4}, advantage={"normalization": "group"}, eval={"seeds": [0]})  # fmt: skip
    trainer = Trainer(config, progress=False, callbacks=[phases])
    trainer.train()
    for epoch in (1, 2):
        trajectories = phases.results["sample", epoch]
        assert trajectories.latents.shape[1] == 3 and trajectories.log_probs.shape[1] == 2
        starts = trajectories.window_start
        assert torch.equal(starts[0::2], starts[1::2])  # one window per group
        with torch.no_grad():  # x_0 is kept apart from the window (which may end before it): the images decode it
            torch.testing.assert_close(trainer.family.decode(trajectories.clean_latents), trajectories.images)
