"""The training loop: each epoch samples, rewards, computes advantages and updates the policy.

    for epoch in 1..N:
        trajectories = sample()                      # the schedule's prompts and seeds; log-probs kept per element
        rewards      = reward(trajectories.images)   # heatmaps [B, H, W] from any black-box callable
        advantages   = advantages(rewards.heatmaps)  # the algorithm's: PXPO [B, 1, h, w] on the latent grid; DDPO [B]
        update(batch)                                # the algorithm's loss over inner epochs, steps and batches
        evaluate()                                   # fixed seeds -> images, reward, evolution grid

What differs between model families (``pxpo.families``), algorithms (``pxpo.algorithms``) and sample schedules
(``pxpo.schedule``: grouped prompts or one image) is chosen once, at construction; nothing here branches on
which. The run folder (``pxpo.run_folder``) owns the run's lifecycle; accelerate handles devices, processes,
mixed precision and gradient accumulation; callbacks (``pxpo.hooks``) see every phase.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from diffusers import DiffusionPipeline

from pxpo.algorithms import Batch, algorithm_class
from pxpo.config import Config, ConfigError, check_resume, load_config
from pxpo.ema import weight_average
from pxpo.families import family_for
from pxpo.hooks import Callback, Callbacks, EpochCallback, PhaseTimer
from pxpo.io import atomic_write_text
from pxpo.launch import (
    check_launch, check_trackers, flat_config, log_tracker_images, new_run_path, process_state, raise_if_stopped, stop_when_orphaned,
)  # fmt: skip
from pxpo.models import load_pipeline, load_trainable_state_dict, trainable_state_dict
from pxpo.prepare import build_optimizer, prepare_trainable
from pxpo.progress import bar
from pxpo.region import JudgedRegion, sample_where_judged
from pxpo.reporting import Reporter
from pxpo.rewards import RewardFn, RewardOutput, WeightedReward, build_reward, check_reward_output, record_injected_reward
from pxpo.rollout import Policy, sample_trajectories
from pxpo.run_folder import RunFolder
from pxpo.sampling import Trajectories
from pxpo.schedule import PromptFn, epoch_seed, sample_groups, sample_schedule, timestep_chunks, training_batches
from pxpo.windows import sde_window_starts

DIAGNOSTICS = ("loss", "approx_kl", "clipfrac")


class Trainer:
    """Fine-tunes a diffusers pipeline of a supported family with the configured algorithm (PXPO, DDPO/GRPO).

    Args:
        config: the validated run configuration.
        reward_fn: a heatmap reward callable; built from ``config.reward`` when None.
        pipeline: a pipeline of a supported family (its sampler is set up as for a loaded one);
            loaded from ``config.model`` when None.
        run_dir: the run folder; a new one under ``config.run.output_dir`` when None.
        resume: continue the run in ``run_dir`` from its latest checkpoint.
        progress: show progress bars.
        config_name: names a new run folder (with the time) when ``config.run.name`` is unset.
        prompt_fn: ``fn(generator) -> (prompt, metadata)`` draws each group's prompt (``pxpo.schedule``).
        callbacks: ``pxpo.hooks.Callback`` objects (around each phase) or functions ``fn(trainer, record)`` called
            after each epoch is logged (and after epoch 0's evaluation), on the main process.
    """

    def __init__(
        self,
        config: Config,
        *,
        reward_fn: RewardFn | None = None,
        pipeline: DiffusionPipeline | None = None,
        run_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        config_name: str = "run",
        prompt_fn: PromptFn | None = None,
        callbacks: Sequence[Callback | EpochCallback] = (),
    ) -> None:
        config = record_injected_reward(config, reward_fn, resume)  # a resume cannot silently train on another reward
        self.timer = PhaseTimer()
        self.config, self.progress, self.callbacks = config, progress, Callbacks([self.timer, *callbacks])
        self.reward_fn = reward_fn or build_reward(config.reward.name, config.reward.kwargs, config.reward.terms)
        self.reward_name = self.reward_fn.name if isinstance(self.reward_fn, WeightedReward) else config.reward.name
        if config.model.mixed_precision != "no" and not torch.cuda.is_available():
            raise ConfigError(f"model.mixed_precision = {config.model.mixed_precision!r} needs a GPU; use 'no' on CPU")
        check_trackers(config.run.log_with)
        check_launch(config)
        self.run = RunFolder.open(run_dir or new_run_path(config, config_name), resume, process_state().is_main_process)  # before slow work
        if resume:
            check_resume(load_config(self.run.config), config)  # before anything is written
        self.accelerator = acc = Accelerator(
            mixed_precision=config.model.mixed_precision,
            gradient_accumulation_steps=config.train.gradient_accumulation_steps * len(timestep_chunks(config)),
            log_with=list(config.run.log_with) or None,
            project_dir=str(self.run.path / "trackers"),
        )
        if acc.num_processes > 1:
            stop_when_orphaned()
        self.pipe = pipeline if pipeline is not None else load_pipeline(config.model.pretrained, single_file_config=config.model.single_file_config)
        self.family = family_for(self.pipe, config.sample.sde_type)
        self.latent_shape = self.family.latent_shape(config.sample.height, config.sample.width)  # checks the size first
        self.params = prepare_trainable(self.family, config.model, epoch_seed(config.run.seed, 0, "lora"), acc.device)
        # The prepared (possibly DDP-wrapped) denoiser is trained; family.denoiser samples.
        self.denoiser, self.optimizer = acc.prepare(self.family.denoiser, build_optimizer(self.params, config.train))
        self.ema = weight_average(acc.unwrap_model(self.denoiser), config.train)  # evaluates and exports; None: off
        noise = self.family.policy_noise(config.sample.eta, config.sample.noise_level)
        self.policy = Policy(self.family, self.denoiser, config.sample.guidance_scale, noise, acc.autocast, acc.unwrap_model(self.denoiser))
        single = config.train.regional_adapter and config.sample.single_image_seed is not None  # (else: per sample, _sample)
        self.region = JudgedRegion(self.latent_shape[1:], config.advantage.interpolation) if single else None
        self.algorithm = algorithm_class(config.train.algorithm)(config, self.latent_shape, self.family)  # refuses a family it cannot train
        self.schedule = sample_schedule(config, self.family, self.latent_shape, acc.process_index, acc.device, prompt_fn, acc.num_processes)
        self.reporter = Reporter(config, self.run, lambda *args: self.reward(*args).heatmaps, self.reward_name)
        if acc.is_main_process:
            atomic_write_text(self.run.config, config.to_toml())
        if config.run.log_with:
            acc.init_trackers(self.run.path.name, config=flat_config(config))
        self.start_epoch = 1 + (self._resume() if resume else 0)

    def _resume(self) -> int:
        """Continue from the newest intact checkpoint (``RunFolder.resume``); return its epoch."""

        def restore(trainable: dict, optimizer_state: dict, state: dict, extra: dict[str, dict]) -> None:
            load_trainable_state_dict(self.accelerator.unwrap_model(self.denoiser), trainable)
            self.optimizer.load_state_dict(optimizer_state)
            self.algorithm.load_state_dict(state)
            if self.ema is not None:
                if "ema" not in extra:  # every checkpoint of a run with an EMA has one: this one lost it
                    raise ValueError(f"it has no ema.safetensors, and train.ema_decay = {self.config.train.ema_decay}")
                self.ema.load(extra["ema"], state["ema"])
            if self.region is not None:
                self.region.load(extra.get("region", {}))  # none: nothing was judged before it

        epoch = self.run.resume(restore, self.accelerator.is_main_process)
        if epoch and self.accelerator.is_main_process:
            self._save_weights()  # the loadable lora/ (or denoiser) always matches the checkpoint resumed from
        return epoch

    # the loop ------------------------------------------------------------------------------------
    def train(self) -> list[dict]:
        """Run the remaining epochs; return all metrics records of the run."""
        self.begin()
        for epoch in bar(range(self.start_epoch, self.config.run.num_epochs + 1), desc="epochs", enabled=self._show_progress, leave=True):
            raise_if_stopped()
            self.step(epoch)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()  # closes the trackers' files
        return self.run.read_metrics()

    def begin(self) -> None:
        """Evaluate the base model as epoch 0, unless the run already has (a resumed run)."""
        if self.start_epoch == 1 and not self.run.read_metrics():
            self.log_epoch({"epoch": 0, **self.callbacks.phase(self, "evaluate", 0, lambda: self.evaluate(0))})

    def step(self, epoch: int, metadata: dict | None = None) -> dict:
        """Run, log and (when due) checkpoint one epoch; return its metrics. ``metadata``: see ``run_epoch``."""
        record = self.run_epoch(epoch, metadata=metadata)
        self.log_epoch(record)
        if epoch % self.config.run.checkpoint_every == 0 or epoch == self.config.run.num_epochs:
            self.save_checkpoint(epoch)
        return record

    def run_epoch(self, epoch: int, evaluate: bool = True, metadata: dict | None = None) -> dict:
        """One epoch: sample -> reward -> advantage -> update -> evaluate. Returns its metrics.

        ``metadata``: entries added to every sample's metadata this epoch (e.g. a person's map for the ``painted`` reward).
        """
        def phase(name, run):
            return self.callbacks.phase(self, name, epoch, run)

        trajectories = phase("sample", lambda: self.sample(epoch))
        for item in trajectories.metadata:
            item.update(metadata or {})
        rewards = phase("reward", lambda: self.reward(trajectories.images, trajectories.prompts, trajectories.metadata))
        if self.region is not None:  # this step trains, and the next samples, with the LoRA on all that was judged so far
            self._widen_region(trajectories, rewards.judged)
        groups = sample_groups(trajectories.metadata)
        advantages = phase("advantage", lambda: self.advantages(rewards.heatmaps, trajectories.prompts, groups))
        keep = self.algorithm.keep(rewards.judged)
        stats = phase("update", lambda: self.update(Batch(trajectories, rewards.heatmaps, advantages, keep), epoch))
        evaluation = phase("evaluate", lambda: self.evaluate(epoch)) if evaluate else {}
        seconds = self.timer.seconds
        image_rewards = self.accelerator.gather(rewards.heatmaps.mean(dim=(1, 2)))
        return {
            "epoch": epoch,
            "reward_mean": image_rewards.mean().item(),
            "reward_std": image_rewards.std(unbiased=False).item(),
            **{f"reward_term_{name}": self.accelerator.gather(values).mean().item() for name, values in rewards.terms.items()},
            **stats,
            "sample_seconds": seconds["sample"],
            "reward_seconds": seconds["reward"],
            "train_seconds": seconds["advantage"] + seconds["update"],
            **evaluation,
        }

    # sample ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, epoch: int) -> Trajectories:
        """This epoch's trajectories with the current policy (the schedule's prompts and seeds), with their metadata."""
        return self.schedule.sample(epoch, self._sample)

    def _sample(self, prompts: list[str], generator, initial_noise=None, metadata=None, desc: str | None = None) -> Trajectories:
        """Trajectories of the current policy with the config's sampler settings (``pxpo.schedule.Sampler``). With
        ``train.regional_adapter`` the LoRA acts where the image was judged so far (one image), or where the reward
        judges the base model's image from the same noise (``pxpo.region.sample_where_judged``)."""
        cfg = self.config.sample
        self.family.denoiser.eval()
        epoch = metadata[0].get("epoch") if metadata else None  # None: evaluation, with the window where it is configured
        groups = sample_groups(metadata).tolist() if metadata else [0] * len(prompts)  # evaluation: no groups

        def run(generator, region: torch.Tensor | None) -> Trajectories:
            with self.accelerator.autocast():
                return sample_trajectories(
                    self.family, prompts, num_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale, noise_level=self.policy.noise_level,
                    generator=generator, height=cfg.height, width=cfg.width, initial_noise=initial_noise, metadata=metadata,
                    adapter_steps=self.config.adapter_steps, sde_window=sde_window_starts(self.config, epoch, groups), region=region,
                    progress=desc is not None and self._show_progress, desc=desc or "sampling",
                )  # fmt: skip

        if not self.config.train.regional_adapter:
            return run(generator, None)
        if self.region is not None:
            return run(generator, self.region.latent())
        judge = lambda base: self.reward(base.images, base.prompts, base.metadata).judged  # noqa: E731
        return sample_where_judged(run, generator, judge, self.latent_shape[1:], self.config.advantage.interpolation)

    @torch.no_grad()
    def _widen_region(self, trajectories: Trajectories, judged: torch.Tensor | None) -> None:
        """Single-image regional adapter: add this step's judged map to the region the trajectories train with. Where it
        grew, the sampling policy's LoRA did not act, so the trained steps' recorded log-probabilities are scored again
        with the widened region and the current weights: the update starts on-policy on the new strokes too (else PPO's
        per-element clip could stop it there)."""
        grew = self.region.add(judged, tuple(trajectories.images.shape[-2:]))
        trajectories.region = self.region.latent().to(trajectories.latents.device).expand(len(trajectories), -1, -1, -1)
        if not grew or not self.config.trains_log_probs:
            return
        steps = torch.arange(*self.config.step_range, device=trajectories.latents.device)
        for chunk in steps.split(self.config.train.timesteps_per_forward):  # as many steps per call as training makes
            for row in range(len(trajectories)):
                rows = torch.full_like(chunk, row)
                trajectories.log_probs[rows, chunk] = self.policy.log_prob(trajectories, rows, chunk).log_prob.to(trajectories.log_probs)

    # reward and advantage -------------------------------------------------------------------------------
    def reward(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        """The reward of images [B, 3, H, W]: heatmaps [B, H, W] checked for shape and finiteness, and its terms."""
        return check_reward_output(self.reward_fn(images, list(prompts), list(metadata)), images, self.reward_name).to(images.device)

    def advantages(self, heatmaps: torch.Tensor, prompts: Sequence[str], groups: torch.Tensor | None = None) -> torch.Tensor:
        """The algorithm's advantages of this process's samples, normalised with statistics over all processes: rewards,
        prompts and GRPO group ids ``groups`` [B] (None: consecutive groups) are gathered in the global sample order,
        normalised, and this process's rows returned."""
        acc = self.accelerator
        rewards = self.algorithm.rewards(heatmaps)
        all_prompts = gather_object(list(prompts)) if acc.num_processes > 1 else list(prompts)
        all_groups = acc.gather(groups.to(acc.device)) if groups is not None else None
        advantages = self.algorithm.advantages(acc.gather(rewards), all_prompts, all_groups)
        return advantages.reshape(acc.num_processes, -1, *rewards.shape[1:])[acc.process_index]

    # update ----------------------------------------------------------------------------------------
    def update(self, batch: Batch, epoch: int) -> dict:
        """The algorithm's loss over ``pxpo.schedule.training_batches``; returns mean diagnostics over all processes.

        Gradients are summed over a training batch's steps (accelerate's accumulation), clipped, and the optimizer
        steps once per ``train.gradient_accumulation_steps`` batches, as in DDPO.
        """
        cfg, acc = self.config, self.accelerator
        extra = ("kl",) * (cfg.train.kl_coef > 0) + ("preserve",) * (cfg.train.preserve_coef > 0)
        totals = dict.fromkeys(DIAGNOSTICS + extra, 0.0)
        if not acc.gather(batch.advantages.abs().amax().reshape(1)).any():
            # nothing to learn (e.g. an all-zero painted map): no optimiser step at all, since Adam's momentum and
            # weight decay would still move the weights, and the shown image must change only when there is feedback
            return {**totals, "grad_norm": 0.0}
        n, device = len(batch.trajectories), batch.trajectories.latents.device
        rng = torch.Generator().manual_seed(epoch_seed(cfg.run.seed, epoch, "shuffle", acc.process_index))
        order = list(training_batches(n, cfg, rng))
        grad_norms, steps = [], bar(total=len(order), desc="training", enabled=self._show_progress)
        pairs = [torch.cat([getattr(call, key) for call in order]).to(device) for key in ("rows", "steps")]
        self.algorithm.prepare(self.policy, batch, *pairs, epoch_seed(cfg.run.seed, epoch, "matching", acc.process_index))
        self.denoiser.train()
        for call in order:
            raise_if_stopped()
            with acc.accumulate(self.denoiser):
                output = self.algorithm.loss(self.policy, batch, call.rows.to(device), call.steps.to(device))
                acc.backward(output.loss * call.weight)
                if acc.sync_gradients:
                    grad_norms.append(float(acc.clip_grad_norm_(self.params, cfg.train.max_grad_norm)))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None and acc.sync_gradients and not self.optimizer.step_was_skipped:
                    self.ema.after_optimizer_step()
            for key in totals:
                value = getattr(output, key)
                totals[key] += (value.item() if value is not None else 0.0) * call.num_steps  # preserve: None when all was judged
            steps.update()
        steps.close()
        count = cfg.train.num_inner_epochs * (n // cfg.train.batch_size) * cfg.num_train_timesteps
        stats = {**{k: v / count for k, v in totals.items()}, "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0}
        if acc.num_processes > 1:  # every rank's diagnostics, not rank 0's alone
            stats = dict(zip(stats, acc.reduce(torch.tensor(list(stats.values()), device=acc.device), reduction="mean").tolist()))
        return stats

    # evaluate ------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict:
        """Fixed-seed samples of the current policy, saved and scored by the reporter (main process)."""
        if not self.accelerator.is_main_process:
            return {}
        start = time.perf_counter()
        images = self.eval_images(epoch)
        record = self.reporter.evaluation(epoch, images)
        log_tracker_images(self.accelerator.trackers, images, epoch)
        return {**record, "eval_seconds": time.perf_counter() - start}

    @torch.no_grad()
    def eval_images(self, epoch: int) -> torch.Tensor:
        """The current policy's images [N, 3, H, W] a person looks at after ``epoch`` epochs (``pxpo.schedule``); with
        ``train.ema_decay > 0``, the EMA's weights make them."""
        with self._averaged():
            return self.schedule.eval_images(epoch, self._sample)

    # outputs ---------------------------------------------------------------------------------------
    def log_epoch(self, record: dict) -> None:
        """Append an epoch's metrics and redraw the figures (main process); trackers and epoch-end callbacks."""
        if self.accelerator.is_main_process:
            self.reporter.log_epoch(record)
            self.callbacks.epoch_end(self, record)
        if self.config.run.log_with:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "epoch"}
            self.accelerator.log(numbers, step=record["epoch"])

    def save_checkpoint(self, epoch: int) -> None:
        """Checkpoint (weights, optimizer, the algorithm's statistics, the EMA) and the loadable LoRA or denoiser (the
        EMA's weights when it is on)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper holds the torch optimizer
        trainable = trainable_state_dict(acc.unwrap_model(self.denoiser))
        state, extra = self.algorithm.state_dict(), {}
        if self.ema is not None:
            state, extra["ema"] = {**state, "ema": self.ema.counters()}, self.ema.tensors()
        if self.region is not None and self.region.pixels is not None:
            extra["region"] = self.region.tensors()
        self.run.save_checkpoint(epoch, trainable, optimizer, state, keep=self.config.run.keep_checkpoints, extra=extra)
        self._save_weights()

    def _save_weights(self) -> None:
        with self._averaged():
            folder = self.run.save_weights(self.family, self.accelerator.unwrap_model(self.denoiser), self.config.model.lora)
        if self.region is not None:
            size = (self.config.sample.height, self.config.sample.width) if self.config.sample.height else self.family.default_size()
            self.region.save_png(folder, size)  # the LoRA acts there only (pxpo sample reads it; black before any stroke)

    def _averaged(self) -> AbstractContextManager:
        """Inside: the trained parameters hold the EMA's weights (``train.ema_decay > 0``; else the live weights)."""
        return self.ema.swapped_in() if self.ema is not None else nullcontext()

    @property
    def _show_progress(self) -> bool:
        return self.progress and self.accelerator.is_main_process
