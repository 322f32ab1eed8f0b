"""What an epoch's update does to the policy, seen through the trainer's public API: its phases (``pxpo.hooks``
callbacks), the torch optimizer's step hooks and the denoiser's forward hooks. Nothing of the trainer is patched."""

import pytest
import torch

from pxpo.rollout import recompute_log_prob
from pxpo.trainer import Trainer
from pxpo.world.architecture import build_tiny_pipeline

pytestmark = pytest.mark.slow  # every test here trains


def small_config(make_config, name, model=None, **train):
    """4 samples of 4 steps, one training batch of 4 (one optimizer step per epoch unless ``train`` says otherwise)."""
    return make_config(sample={"num_steps": 4, "batch_size": 4}, train={"batch_size": 4, **train}, eval={"seeds": [0]},
                       model=model or {}, run={"num_epochs": 1, "name": name})  # fmt: skip


def torch_optimizer(trainer):
    """The torch optimizer inside accelerate's wrapper (whose step hooks see every real step)."""
    return getattr(trainer.optimizer, "optimizer", trainer.optimizer)


@pytest.mark.parametrize(("algorithm", "lora"), [("pxpo", True), ("ddpo", False)])
def test_an_update_raises_the_advantage_weighted_log_likelihood_of_its_own_samples(make_config, phases, algorithm, lora):
    """Why training on the blue penalty raises the reward (the outcome is measured by benchmarks/paper_experiments.py):
    an on-policy update is a step up the policy-gradient surrogate, so afterwards the policy gives more probability to
    what the advantages favoured. For PXPO each element's log-probability is weighted by its own advantage; for DDPO
    the image's mean log-probability by the image's advantage."""
    config = small_config(make_config, algorithm, model={"lora": lora}, algorithm=algorithm, learning_rate=1e-4)
    trainer = Trainer(config, pipeline=build_tiny_pipeline(0), progress=False, callbacks=[phases])
    trainer.run_epoch(1)
    trajectories, advantages = phases.results["sample", 1], phases.results["advantage", 1]
    assert advantages.shape == ((4, 1, 16, 16) if algorithm == "pxpo" else (4,))
    rows, steps = torch.arange(4).repeat_interleave(4), torch.arange(4).repeat(4)
    with torch.no_grad():
        after = recompute_log_prob(trainer.family, trainer.denoiser, trajectories, rows, steps,
                                   guidance_scale=config.sample.guidance_scale, noise_level=config.sample.eta).log_prob  # fmt: skip
    change = after - trajectories.log_probs[rows, steps]  # the sampled log-probabilities are the policy before the update
    assert change.abs().max() > 0
    if algorithm == "pxpo":
        gain = (advantages[rows] * change).mean()
    else:
        gain = (advantages[rows] * change.mean(dim=(1, 2, 3))).mean()
    assert gain > 0, gain


@pytest.mark.parametrize("algorithm", ["pxpo", "ddpo"])
def test_batching_timesteps_leaves_the_gradient_unchanged(make_config, algorithm):
    """train.timesteps_per_forward only regroups work: the optimizer step sees the same summed gradient whether the
    5 trained steps of each sample go through the denoiser 1 (DDPO's loop), 2 (uneven: 2 + 2 + 1) or 5 at a time."""

    def gradients(k: int) -> tuple[list[torch.Tensor], dict]:
        config = make_config(sample={"num_steps": 5, "batch_size": 4}, eval={"seeds": [0]}, run={"num_epochs": 1, "name": f"{algorithm}-{k}"},
                             train={"algorithm": algorithm, "batch_size": 4, "timesteps_per_forward": k, "max_grad_norm": float("inf")})  # fmt: skip
        trainer = Trainer(config, pipeline=build_tiny_pipeline(seed=0), progress=False)
        seen = []
        torch_optimizer(trainer).register_step_pre_hook(lambda optimizer, args, kwargs: seen.append([p.grad.clone() for p in trainer.params]))
        record = trainer.run_epoch(1)
        assert len(seen) == 1  # one training batch: one optimizer step, at the initial weights
        return seen[0], record

    reference, reference_record = gradients(1)
    assert any(g.abs().max() > 0 for g in reference)
    for k in (2, 5):
        got, record = gradients(k)
        for g, w in zip(got, reference):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
        for key in ("loss", "approx_kl", "clipfrac"):
            assert record[key] == pytest.approx(reference_record[key], rel=1e-4, abs=1e-6), key  # means of O(1) advantages: float32 rounding


def test_training_settings_take_effect(make_config):
    """Gradient accumulation, a fraction of the steps, and inner epochs with clipping engaged: counted as optimizer
    steps (the torch optimizer's step hook) and (sample, step) pairs through the denoiser with gradients."""

    def run(**train):
        name = "settings-" + "-".join(f"{k}{v}" for k, v in train.items())
        config = small_config(make_config, name, **{"batch_size": 2, **train})
        trainer = Trainer(config, pipeline=build_tiny_pipeline(0), progress=False)
        steps, pairs = [], []
        torch_optimizer(trainer).register_step_post_hook(lambda optimizer, args, kwargs: steps.append(1))
        cfg_branches = 2 if config.sample.guidance_scale > 1 else 1  # classifier-free guidance: two rows per pair

        def count(module, args, kwargs):
            if torch.is_grad_enabled():  # training; sampling and evaluation run without gradients
                pairs.append(kwargs["sample"].shape[0] // cfg_branches)

        trainer.family.denoiser.register_forward_pre_hook(count, with_kwargs=True)
        record = trainer.run_epoch(1)
        return len(steps), sum(pairs), record

    assert run()[:2] == (2, 16)  # 2 batches of 2 samples, 4 steps each: 2 optimizer steps, 16 (sample, step) pairs
    assert run(gradient_accumulation_steps=2)[:2] == (1, 16)  # both batches summed into one step
    assert run(timestep_fraction=0.5)[:2] == (2, 8)  # half of the steps of each sample
    steps, pairs, record = run(num_inner_epochs=2, learning_rate=0.1, clip_range=1e-6)
    assert (steps, pairs) == (4, 32) and record["clipfrac"] > 0 and record["approx_kl"] > 0  # the second pass is off-policy
