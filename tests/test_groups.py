"""GRPO groups across sampling batches and processes: which group each sample belongs to, the prompts drawn alike on
every process, advantages computed per group id, and the launch check. (The two-process run: test_multiprocess.py.)"""

import pytest
import torch

from pxpo.advantages import compute_advantages
from pxpo.config import ConfigError, validate_config
from pxpo.sampling import Conditioning, Trajectories
from pxpo.schedule import GroupedPrompts, epoch_seed, group_ids, sample_groups

PROMPTS = ["red taxi in traffic", "nature landscape", "portrait of a man on the beach", "a bowl of fruit", "a snowy owl"]


def _config(**sample):
    return validate_config({"sample": {"prompts": PROMPTS, "num_steps": 2, **sample}, "train": {"batch_size": 1}})


class FakeSampler:
    """A ``pxpo.schedule.Sampler`` that draws each sample's "noise" [B] from the generator it is given and records it."""

    def __call__(self, prompts, generator, initial_noise=None, metadata=None, desc=None):
        noise = torch.randn(len(prompts), generator=generator)
        return Trajectories(prompts=list(prompts), conditioning=Conditioning({}), timesteps=torch.zeros(1), latents=noise[:, None],
                            log_probs=torch.zeros(len(prompts), 1), images=torch.zeros(len(prompts), 3, 1, 1), metadata=metadata)  # fmt: skip


def _sample(config, process, num_processes, epoch=3):
    schedule = GroupedPrompts(config, None, (4, 16, 16), process, "cpu", num_processes)
    return schedule.sample(epoch, FakeSampler())


# which group ------------------------------------------------------------------------------------------------------
def test_group_ids_number_the_samples_over_processes_in_gather_order():
    # 2 processes x 6 samples (3 batches of 2), groups of 4: the middle group spans both processes and two batches
    assert group_ids(0, 6, 4).tolist() == [0, 0, 0, 0, 1, 1]
    assert group_ids(1, 6, 4).tolist() == [1, 1, 2, 2, 2, 2]
    assert group_ids(0, 8, 4).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # one process, groups inside batches: consecutive
    assert group_ids(2, 3, 9).tolist() == [0, 0, 0]


def test_a_groups_prompt_is_the_same_on_every_process_and_each_sample_has_its_own_noise():
    config = _config(batch_size=2, num_batches_per_epoch=3, group_size=4)
    ranks = [_sample(config, p, 2) for p in (0, 1)]
    prompts = [p for t in ranks for p in t.prompts]
    groups = torch.cat([sample_groups(t.metadata) for t in ranks])
    assert groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    for g in range(3):
        assert len({prompts[i] for i in range(12) if groups[i] == g}) == 1, g
    assert all(m["epoch"] == 3 and m["prompt"] == p for t in ranks for m, p in zip(t.metadata, t.prompts))
    # the union is what one process sampling all 12 draws: the group prompts do not depend on the process
    one = _sample(_config(batch_size=2, num_batches_per_epoch=6, group_size=4), 0, 1)
    assert one.prompts == prompts and sample_groups(one.metadata).tolist() == groups.tolist()
    noise = torch.cat([t.latents[:, 0] for t in ranks])
    assert len(set(noise.tolist())) == 12  # no two samples of a group share their noise
    torch.testing.assert_close(noise[:6], one.latents[:6, 0], rtol=0, atol=0)  # process 0's noise: its own generator, as before
    assert not torch.equal(noise[6:], one.latents[6:, 0])  # process 1 draws its own


def test_with_one_process_and_groups_inside_a_batch_the_prompts_are_the_ones_drawn_before():
    """The layout before groups could span batches: each batch drew batch_size / group_size prompts from process 0's
    generator and repeated each group_size times in a row (hand-written here)."""
    config = _config(batch_size=6, num_batches_per_epoch=2, group_size=3)
    rng = torch.Generator().manual_seed(epoch_seed(config.run.seed, 3, "prompts", 0))
    expected = []
    for _ in range(2):
        for _ in range(6 // 3):
            expected += [PROMPTS[int(torch.randint(len(PROMPTS), (1,), generator=rng))]] * 3
    trajectories = _sample(config, 0, 1)
    assert trajectories.prompts == expected and len(set(expected)) > 1
    assert sample_groups(trajectories.metadata).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


# advantages by group id -------------------------------------------------------------------------------------------
def _reference(rewards, groups, per_location):
    """Hand-written: each group's members found by id, standardised in float64 (population std; zero spread -> 0)."""
    rewards, out = rewards.double(), torch.zeros(rewards.shape, dtype=torch.float64)
    for g in set(groups.tolist()):
        rows = [i for i in range(len(groups)) if groups[i] == g]
        block = rewards[rows]
        for i, row in zip(rows, block):
            if per_location:
                mean, std = block.mean(0), ((block - block.mean(0)) ** 2).mean(0).sqrt()
                out[i] = torch.where(std < 1e-6, torch.zeros_like(row), (row - mean) / std)
            else:
                mean, std = block.mean(), ((block - block.mean()) ** 2).mean().sqrt()
                out[i] = (row - mean) / std
    return out


@pytest.mark.parametrize("normalization", ["group", "group_location"])
def test_advantages_are_computed_per_group_id_wherever_its_samples_lie(normalization):
    torch.manual_seed(0)
    maps = torch.randn(12, 1, 3, 3)
    maps[[2, 5, 9], :, 1, 1] = 4.0  # one location the same in every sample of group 1 (rows 2, 5, 9)
    groups = torch.tensor([0, 3, 1, 2, 0, 1, 3, 2, 0, 1, 2, 3])  # groups of 3, interleaved: none of them consecutive
    advantages = compute_advantages(maps, ["a"] * 12, normalization, None, group_size=3, groups=groups)
    torch.testing.assert_close(advantages.double(), _reference(maps, groups, normalization == "group_location"), rtol=1e-5, atol=1e-6)
    if normalization == "group_location":
        assert torch.all(advantages[[2, 5, 9], :, 1, 1] == 0)
    order = torch.randperm(12)  # the rows moved with their ids: the same advantage for each sample (up to summation order)
    moved = compute_advantages(maps[order], ["a"] * 12, normalization, None, group_size=3, groups=groups[order])
    torch.testing.assert_close(moved, advantages[order], rtol=1e-5, atol=1e-6)


def test_groups_spanning_batches_and_processes_get_their_whole_groups_statistics():
    torch.manual_seed(1)
    rewards = torch.randn(12)  # scalar rewards (ddpo): 2 processes x 3 batches of 2, groups of 4
    groups = torch.cat([group_ids(p, 6, 4) for p in (0, 1)])
    advantages = compute_advantages(rewards, ["a"] * 12, "group", None, group_size=4, groups=groups)
    torch.testing.assert_close(advantages.double(), _reference(rewards, groups, False), rtol=1e-5, atol=1e-6)
    block = rewards[4:8].double()  # group 1: process 0's last batch and process 1's first
    torch.testing.assert_close(advantages[4:8].double(), (block - block.mean()) / block.std(unbiased=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalization", ["group", "group_location"])
def test_consecutive_group_ids_give_bit_for_bit_the_advantages_of_consecutive_groups(normalization):
    """The default layout (one process, groups inside a batch): the same advantages, bit for bit, as the reshape into
    consecutive groups that computed them before group ids (hand-written here)."""
    torch.manual_seed(2)
    maps = torch.randn(8, 1, 4, 4)
    grouped = maps.reshape(4, 2, -1)
    dims = (1,) if normalization == "group_location" else (1, 2)
    mean, std = grouped.mean(dim=dims, keepdim=True), grouped.std(dim=dims, keepdim=True, unbiased=False)
    before = torch.where(std < 1e-6, torch.zeros_like(grouped), (grouped - mean) / std.clamp(min=1e-6)).reshape(maps.shape)
    with_ids = compute_advantages(maps, ["a"] * 8, normalization, None, group_size=2, groups=torch.arange(8) // 2)
    assert torch.equal(with_ids, before)
    assert torch.equal(compute_advantages(maps, ["a"] * 8, normalization, None, group_size=2), before)  # no ids: consecutive


def test_a_group_with_the_wrong_number_of_samples_is_named():
    with pytest.raises(ValueError, match="group 1 has 3 samples: every group needs sample.group_size = 2"):
        compute_advantages(torch.randn(5), ["a"] * 5, "group", None, group_size=2, groups=torch.tensor([0, 0, 1, 1, 1]))


# the launch check -------------------------------------------------------------------------------------------------
def test_a_group_larger_than_the_sampling_batch_is_a_valid_config():
    config = _config(batch_size=2, num_batches_per_epoch=3, group_size=4)
    config.check_processes(2)  # 12 samples over 2 processes: 3 groups
    with pytest.raises(ConfigError) as error:
        config.check_processes(1)
    assert str(error.value) == (
        "sample.group_size = 4 must divide the 6 samples per epoch over all processes (sample.batch_size = 2 * "
        "sample.num_batches_per_epoch = 3 * 1 processes): it would leave a group that cannot be spread over the processes"
    )


def test_a_launch_whose_groups_do_not_fill_the_epoch_is_refused_before_any_work(tmp_path):
    from pxpo.launch import check_launch
    from pxpo.trainer import Trainer

    config = validate_config({"sample": {"batch_size": 6, "group_size": 4}, "train": {"batch_size": 6},
                              "run": {"output_dir": str(tmp_path / "runs")}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"sample.group_size = 4 must divide the 6 samples per epoch over all processes"):
        check_launch(config)
    with pytest.raises(ConfigError, match="a group that cannot be spread over the processes"):
        Trainer(config, progress=False)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="1 processes"):
        GroupedPrompts(config, None, (4, 16, 16), 0, "cpu")


# training -----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_with_groups_larger_than_the_sampling_batch_trains_on_whole_group_advantages(make_config, tiny_pipe, phases):
    from pxpo.trainer import Trainer

    config = make_config(sample={"num_steps": 3, "batch_size": 2, "num_batches_per_epoch": 3, "group_size": 3, "prompts": PROMPTS},
                         train={"batch_size": 3}, advantage={"normalization": "group_location"}, run={"num_epochs": 1})  # fmt: skip
    trainer = Trainer(config, pipeline=tiny_pipe, progress=False, callbacks=[phases])
    record = trainer.run_epoch(1, evaluate=False)
    trajectories, rewards = phases.results["sample", 1], phases.results["reward", 1]
    groups = sample_groups(trajectories.metadata)
    assert groups.tolist() == [0, 0, 0, 1, 1, 1]  # each group spans two of the three sampling batches
    assert trajectories.prompts[0:3] == [trajectories.prompts[0]] * 3 and trajectories.prompts[3:6] == [trajectories.prompts[3]] * 3
    latent_rewards = trainer.algorithm.rewards(rewards.heatmaps)
    expected = _reference(latent_rewards, groups, per_location=True).clamp(-config.train.adv_clip_max, config.train.adv_clip_max)
    # float32 against float64 where a location's 3 rewards nearly agree; a wrong grouping is off by O(1)
    torch.testing.assert_close(phases.results["advantage", 1].double(), expected, rtol=1e-3, atol=1e-4)
    assert record["loss"] == record["loss"] and record["grad_norm"] > 0  # a finite update that moved something


@pytest.mark.parametrize("name", ["sd35m_blue_penalty", "sd35m_hair_removal", "flux_dev_blue_penalty", "flux_dev_hair_removal"])
def test_the_full_size_configs_sample_flow_grpos_48_groups_of_24_on_8_gpus(name):
    from pathlib import Path

    from pxpo.config import load_config

    config = load_config(Path(__file__).parents[1] / "configs" / f"{name}.toml")
    sample, train = config.sample, config.train
    for processes in (1, 8):
        config.check_processes(processes)  # whole groups on one GPU and on eight
    assert sample.group_size == 24 and sample.batch_size * sample.num_batches_per_epoch * 8 == 48 * 24
    assert sample.group_size > sample.batch_size  # a group spans sampling batches (and GPUs)
    assert train.batch_size == sample.batch_size and train.gradient_accumulation_steps * 2 == sample.num_batches_per_epoch  # 2 steps/epoch
