"""What each epoch samples, from which seeds: the sample schedule, chosen once per run.

- ``GroupedPrompts``: an epoch's samples over all processes are numbered in one global order (process p holds
  p * n ... (p + 1) * n - 1, n = batch_size * num_batches_per_epoch: the order in which accelerate gathers them), and
  sample i belongs to GRPO group i // group_size. Each group's prompt (from ``sample.prompts`` or a ``prompt_fn``) is
  drawn from a generator that is the same on every process, so a group may span sampling batches and processes;
  each sample's noise is its own. With one process and groups inside a batch this is what it always was: each batch's
  groups of ``group_size`` in a row. Evaluation samples the fixed ``eval.seeds``.
- ``SingleImage`` (``sample.single_image_seed``, human feedback): one image of one prompt from the same initial
  noise every epoch; with ``sample.single_image_noise = "fixed"`` the steps' noise is fixed too, so the image is a
  function of the weights alone. The image shown after epoch k is exactly the trajectory epoch k + 1 trains on.

Every epoch's randomness is drawn from (run.seed, epoch, purpose, process) (the group prompts: process 0's, on
every process), so a resumed run repeats an uninterrupted one exactly. ``training_batches`` is the order in which an
epoch's samples and steps are trained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import torch

from pxpo.sampling import Trajectories

if TYPE_CHECKING:
    from pxpo.config import Config
    from pxpo.families import ModelFamily

_PURPOSES = {"sample": 0, "prompts": 1, "shuffle": 2, "lora": 3, "single_image_steps": 4, "sde_window": 5, "matching": 6}

PromptFn = Callable[[torch.Generator], tuple[str, dict]]


def epoch_seed(seed: int, epoch: int, purpose: str, process: int = 0) -> int:
    """A seed for one purpose of one epoch on one process, independent of everything before it."""
    return int(np.random.SeedSequence([seed, epoch, _PURPOSES[purpose], process]).generate_state(1)[0])


class Sampler(Protocol):
    """The trainer's sampler: trajectories of the current policy with the config's sampler settings."""

    def __call__(
        self, prompts: list[str], generator, initial_noise: torch.Tensor | None = None, metadata: list[dict] | None = None, desc: str | None = None
    ) -> Trajectories: ...


class SampleSchedule:
    """Draws each epoch's prompts and seeds; ``sample`` returns trajectories with their metadata.

    Args:
        config: the run's config.
        family: the model family (for the initial noise).
        latent_shape: (C, h, w).
        process: this process's index (each process samples its own share of the groups, with its own noise).
        device: where generators draw.
        num_processes: how many processes share an epoch's groups.
    """

    def __init__(
        self, config: Config, family: ModelFamily, latent_shape: tuple[int, int, int], process: int, device: torch.device,
        num_processes: int = 1,
    ) -> None:  # fmt: skip
        self.config = config
        self.family = family
        self.latent_shape = latent_shape
        self.process = process
        self.device = device
        self.num_processes = num_processes

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def sample(self, epoch: int, sampler: Sampler) -> Trajectories:
        """Epoch ``epoch``'s trajectories on this process; each sample's metadata holds its prompt, the epoch and its
        GRPO group id ("group")."""
        raise NotImplementedError

    def eval_images(self, epoch: int, sampler: Sampler) -> torch.Tensor:
        """The images [N, 3, H, W] a person looks at after ``epoch`` epochs."""
        raise NotImplementedError


class GroupedPrompts(SampleSchedule):
    """Prompt groups drawn per epoch; evaluation on the fixed ``eval.seeds``.

    Args:
        prompt_fn: ``fn(generator) -> (prompt, metadata)`` draws each group's prompt instead of ``sample.prompts``
            (draw with the generator: it is seeded per epoch, so a resumed run repeats); the metadata dict reaches
            the reward with the sample.
    """

    def __init__(self, *args, prompt_fn: PromptFn | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config.check_processes(self.num_processes)  # the groups fill the epoch's samples over all processes
        self.prompt_fn = prompt_fn

    def sample(self, epoch: int, sampler: Sampler) -> Trajectories:
        cfg, seed = self.config.sample, self.config.run.seed
        groups = self.draw_groups(epoch)
        noise_rng = self.generator(epoch_seed(seed, epoch, "sample", self.process))
        ids = group_ids(self.process, cfg.batch_size * cfg.num_batches_per_epoch, cfg.group_size).tolist()
        parts = []
        for b in range(cfg.num_batches_per_epoch):
            batch = ids[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            prompts = [groups[g][0] for g in batch]
            metadata = [{**groups[g][1], "prompt": groups[g][0], "epoch": epoch, "group": g} for g in batch]
            parts.append(sampler(prompts, noise_rng, metadata=metadata, desc=f"sampling {b + 1}/{cfg.num_batches_per_epoch}"))
        return Trajectories.cat(parts)

    def draw_groups(self, epoch: int) -> list[tuple[str, dict]]:
        """Every group's (prompt, metadata) of epoch ``epoch`` over all processes, in group order: the same on every
        process (one generator, process 0's seed)."""
        cfg = self.config.sample
        rng = torch.Generator().manual_seed(epoch_seed(self.config.run.seed, epoch, "prompts"))
        count = cfg.batch_size * cfg.num_batches_per_epoch * self.num_processes // cfg.group_size
        return [self.draw_prompt(rng) for _ in range(count)]

    def draw_prompt(self, generator: torch.Generator) -> tuple[str, dict]:
        """One group's prompt and metadata: from prompt_fn, or uniformly from sample.prompts."""
        if self.prompt_fn is not None:
            drawn = self.prompt_fn(generator)
            if not (isinstance(drawn, tuple) and len(drawn) == 2 and isinstance(drawn[0], str) and drawn[0].strip() and isinstance(drawn[1], dict)):
                raise ValueError(f"prompt_fn returned {drawn!r:.200}: expected a tuple (a non-empty prompt, a dict of metadata)")
            return drawn
        prompts = self.config.sample.prompts
        return prompts[int(torch.randint(len(prompts), (1,), generator=generator))], {}

    def eval_images(self, epoch: int, sampler: Sampler) -> torch.Tensor:
        seeds = self.config.eval.seeds
        return sampler(eval_prompts(self.config), [self.generator(s) for s in seeds], desc="evaluating").images


class SingleImage(SampleSchedule):
    """One image of ``sample.prompts[0]`` from ``sample.single_image_seed``, every epoch."""

    def initial_noise(self) -> torch.Tensor:
        """The image's initial latents [1, C, h, w], drawn from sample.single_image_seed."""
        return self.family.initial_noise(1, self.latent_shape, self.generator(self.config.sample.single_image_seed))

    def sample(self, epoch: int, sampler: Sampler) -> Trajectories:
        cfg = self.config.sample
        if cfg.single_image_noise == "fixed":  # the image: a function of the weights alone
            noise_seed = epoch_seed(cfg.single_image_seed, 0, "single_image_steps")
        else:
            noise_seed = epoch_seed(self.config.run.seed, epoch, "sample", self.process)
        prompt = cfg.prompts[0]
        metadata = [{"prompt": prompt, "epoch": epoch, "group": 0}]
        return sampler([prompt], self.generator(noise_seed), self.initial_noise(), metadata=metadata)

    def eval_images(self, epoch: int, sampler: Sampler) -> torch.Tensor:
        """The trajectory that epoch + 1 will sample and train on: the image a person judges is the one their
        feedback trains (with ``single_image_noise = "fixed"`` it changes only when the weights do)."""
        return self.sample(epoch + 1, sampler).images


def eval_prompts(config: Config) -> list[str]:
    """The prompt of each evaluation seed (eval.prompts, or sample.prompts, cycled over eval.seeds)."""
    prompts = config.eval.prompts or config.sample.prompts
    return [prompts[i % len(prompts)] for i in range(len(config.eval.seeds))]


def sample_schedule(
    config: Config, family: ModelFamily, latent_shape: tuple[int, int, int], process: int, device: torch.device,
    prompt_fn: PromptFn | None = None, num_processes: int = 1,
) -> SampleSchedule:  # fmt: skip
    """The run's schedule: SingleImage when ``sample.single_image_seed`` is set, else GroupedPrompts."""
    if config.sample.single_image_seed is not None:
        if prompt_fn is not None:
            raise ValueError("prompt_fn draws prompts per group; single-image mode (sample.single_image_seed) samples one fixed prompt")
        return SingleImage(config, family, latent_shape, process, device, num_processes)
    return GroupedPrompts(config, family, latent_shape, process, device, num_processes, prompt_fn=prompt_fn)


def group_ids(process: int, per_process: int, group_size: int) -> torch.Tensor:
    """The GRPO group id [per_process] of each of this process's samples, in sampling order.

    An epoch's samples are numbered over all processes in the order accelerate gathers them: process p holds
    p * per_process ... (p + 1) * per_process - 1; sample i belongs to group i // group_size (a group may span
    sampling batches and processes).
    """
    return torch.arange(process * per_process, (process + 1) * per_process) // group_size


def sample_groups(metadata: Sequence[dict]) -> torch.Tensor:
    """The group ids [B] the schedule gave the samples (their metadata's "group")."""
    return torch.tensor([item["group"] for item in metadata], dtype=torch.long)


class TrainingCall(NamedTuple):
    """One denoiser call of an update: the flat (sample ``rows[i]``, step ``steps[i]``) pairs [b * k]."""

    rows: torch.Tensor
    steps: torch.Tensor
    num_steps: int  # k, the steps of each sample in this call
    weight: float  # the call's share of the trained steps: the summed gradients are the mean over all of them


def training_batches(num_samples: int, config: Config, generator: torch.Generator) -> Iterator[TrainingCall]:
    """The order of an epoch's update, one ``TrainingCall`` per denoiser call, over the inner epochs.

    Each inner epoch shuffles the samples and, per sample, its steps (``config.step_range``: the step window, or all
    ``sample.num_steps``); each training batch of ``train.batch_size`` samples trains its first ``num_train_timesteps``
    of them, ``train.timesteps_per_forward`` at a time.
    """
    train, (first, end) = config.train, config.step_range
    chunks = timestep_chunks(config)
    window = end - first
    for _ in range(train.num_inner_epochs):
        order = torch.randperm(num_samples, generator=generator)
        step_order = torch.stack([torch.randperm(window, generator=generator) for _ in range(num_samples)]) + first  # [n, T]
        for rows in order.split(train.batch_size):
            for chunk in chunks:
                weight = len(chunk) * len(chunks) / config.num_train_timesteps
                yield TrainingCall(rows.repeat_interleave(len(chunk)), step_order[rows][:, chunk].reshape(-1), len(chunk), weight)


def timestep_chunks(config: Config) -> list[list[int]]:
    """Columns of the per-sample step order trained together: [[0..k-1], [k..2k-1], ...]."""
    steps, k = config.num_train_timesteps, config.train.timesteps_per_forward
    return [list(range(i, min(i + k, steps))) for i in range(0, steps, k)]
