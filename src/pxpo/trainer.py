"""The training loop: each epoch samples, rewards, computes advantages and updates the policy.

    for epoch in 1..N:
        trajectories = sample()                      # policy = denoiser + stochastic sampler, log-probs kept per element
        heatmaps     = reward(trajectories.images)   # [B, H, W] from any black-box callable
        advantages   = advantages(heatmaps)          # PXPO: [B, 1, h, w] on the latent grid; DDPO: [B]
        update(trajectories, advantages)             # PPO-clipped surrogate, inner epochs, timestep subsets
        evaluate()                                   # fixed seeds -> images, reward, evolution grid

The model family (``pxpo.families``: SD, SD3, FLUX) supplies everything model-specific; nothing here
depends on which one it is. Every epoch's randomness is drawn from (run.seed, epoch), so a resumed run repeats an
uninterrupted one exactly. accelerate handles devices, processes, mixed precision and gradient
accumulation.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from diffusers import DiffusionPipeline
from diffusers.training_utils import cast_training_params
from safetensors import SafetensorError

from pxpo.advantages import PerPromptStatTracker, compute_advantages, heatmap_to_latent
from pxpo.config import Config, ConfigError, RewardConfig
from pxpo.families import family_for
from pxpo.io import atomic_directory, atomic_write_text
from pxpo.launch import check_launch, check_trackers, flat_config, process_state, raise_if_stopped, stop_when_orphaned
from pxpo.losses import LossOutput, ddpo_loss, kl_to_reference, pxpo_loss
from pxpo.models import load_pipeline, load_trainable_state_dict, trainable_state_dict
from pxpo.progress import bar
from pxpo.reporting import Reporter, eval_prompts
from pxpo.rewards import RewardFn, WeightedReward, build_reward, check_heatmaps, injected_reward_name
from pxpo.run_folder import RunFolder, to_pil
from pxpo.rollout import recompute_log_prob, sample_trajectories
from pxpo.sampling import StepOutput, Trajectories

logger = logging.getLogger(__name__)

_PURPOSES = {"sample": 0, "prompts": 1, "shuffle": 2, "lora": 3, "single_image_steps": 4}


def epoch_seed(seed: int, epoch: int, purpose: str, process: int = 0) -> int:
    """A seed for one purpose of one epoch on one process, independent of everything before it."""
    return int(np.random.SeedSequence([seed, epoch, _PURPOSES[purpose], process]).generate_state(1)[0])


PromptFn = Callable[[torch.Generator], tuple[str, dict]]
EpochCallback = Callable[["Trainer", dict], None]


@dataclass
class Batch:
    """One epoch's data on this process: trajectories, rewards and advantages."""

    trajectories: Trajectories
    heatmaps: torch.Tensor  # [B, H, W] pixel rewards
    advantages: torch.Tensor  # PXPO: [B, 1, h, w]; DDPO: [B]


class Trainer:
    """Fine-tunes a diffusers pipeline (SD, SD3 or FLUX family) with PXPO or DDPO/GRPO.

    Args:
        config: the validated run configuration.
        reward_fn: a heatmap reward callable; built from ``config.reward`` when None.
        pipeline: a pipeline of a supported family (its sampler is set up as for a loaded one);
            loaded from ``config.model`` when None.
        run_dir: the run folder; a new one under ``config.run.output_dir`` when None.
        resume: continue the run in ``run_dir`` from its latest checkpoint.
        progress: show progress bars.
        config_name: names a new run folder (with the time) when ``config.run.name`` is unset.
        prompt_fn: ``fn(generator) -> (prompt, metadata)`` draws each group's prompt instead of
            ``sample.prompts`` (draw with the generator: it is seeded per epoch, so a resumed run repeats);
            the metadata dict reaches the reward with the sample.
        callbacks: ``fn(trainer, record)`` called after each epoch is logged (and after epoch 0's
            evaluation), with the epoch's metrics record; on the main process.
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
        callbacks: Sequence[EpochCallback] = (),
    ) -> None:
        if reward_fn is not None:  # recorded as what it is, so that a resume cannot silently train on another reward
            name = injected_reward_name(reward_fn)
            if resume and config.reward.name != name:
                raise ConfigError(f"this run was trained with reward {config.reward.name!r}; reward_fn is {name!r}: resume with the same reward")
            config = config.model_copy(update={"reward": RewardConfig(name=name)}, deep=True)
        self.config = config
        self.progress = progress
        self.prompt_fn = prompt_fn
        self.callbacks = list(callbacks)
        self.reward_fn = reward_fn or build_reward(config.reward.name, config.reward.kwargs, config.reward.terms)
        self.reward_name = self.reward_fn.name if isinstance(self.reward_fn, WeightedReward) else config.reward.name
        if config.model.mixed_precision != "no" and not torch.cuda.is_available():
            raise ConfigError(f"model.mixed_precision = {config.model.mixed_precision!r} needs a GPU; use 'no' on CPU")
        check_trackers(config.run.log_with)
        check_launch(config)
        self.run = self._check_run_folder(run_dir, resume, config_name)  # before any slow work
        self.accelerator = Accelerator(
            mixed_precision=config.model.mixed_precision,
            gradient_accumulation_steps=config.train.gradient_accumulation_steps * len(self._timestep_chunks()),
            log_with=list(config.run.log_with) or None,
            project_dir=str(self.run.path / "trackers"),
        )
        if self.accelerator.num_processes > 1:
            stop_when_orphaned()
        self.pipe = pipeline if pipeline is not None else load_pipeline(config.model.pretrained, single_file_config=config.model.single_file_config)
        self.family = family_for(self.pipe)
        self.latent_shape = self.family.latent_shape(config.sample.height, config.sample.width)  # checks the size first
        self.noise_level = getattr(config.sample, self.family.noise_setting)
        self._prepare_models()
        self.reporter = Reporter(config, self.run, self.reward, self.reward_name)
        if self.accelerator.is_main_process:
            atomic_write_text(self.run.config, self.config.to_toml())
        self.tracker = PerPromptStatTracker(config.advantage.per_prompt_buffer_size, config.advantage.per_prompt_min_count)
        if config.run.log_with:
            self.accelerator.init_trackers(self.run.path.name, config=flat_config(config))
        self.start_epoch = 1
        if resume:
            self._resume()

    # set-up --------------------------------------------------------------------------------------
    def _prepare_models(self) -> None:
        cfg, pipe, acc, family = self.config.model, self.pipe, self.accelerator, self.family
        weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
        pipe.to(acc.device)
        frozen = [pipe.vae, *family.text_encoders]
        for module in frozen:
            module.requires_grad_(False).eval()  # an injected pipeline built from configs starts in train mode
        if cfg.lora:
            frozen.append(family.denoiser)
        if weight_dtype != torch.float32:
            for module in frozen:
                module.to(dtype=weight_dtype)
        if cfg.lora:
            with torch.random.fork_rng(devices=[]):  # LoRA's A matrices are drawn from run.seed, not global state
                torch.manual_seed(epoch_seed(self.config.run.seed, 0, "lora"))
                family.add_lora(cfg.lora_rank, cfg.lora_alpha)
            cast_training_params(family.denoiser, dtype=torch.float32)
        else:
            family.denoiser.requires_grad_(True)
        if cfg.gradient_checkpointing:
            family.denoiser.enable_gradient_checkpointing()
        self.params = [p for p in family.denoiser.parameters() if p.requires_grad]
        t = self.config.train
        optimizer = torch.optim.AdamW(
            self.params,
            lr=t.learning_rate,
            betas=(t.adam_beta1, t.adam_beta2),
            weight_decay=t.adam_weight_decay,
            eps=t.adam_epsilon,
        )
        # The prepared (possibly DDP-wrapped) denoiser is trained; family.denoiser samples.
        self.denoiser, self.optimizer = acc.prepare(family.denoiser, optimizer)

    def _check_run_folder(self, run_dir: str | Path | None, resume: bool, config_name: str) -> RunFolder:
        if run_dir is None:
            name = self.config.run.name or f"{config_name}-{datetime.now():%Y%m%d-%H%M%S}"
            if process_state().num_processes > 1:  # the main process's clock names the folder for every rank
                name = broadcast_object_list([name])[0]
            run_dir = Path(self.config.run.output_dir) / name
        run = RunFolder(run_dir)
        if resume:
            if not run.config.exists():
                raise ConfigError(f"cannot resume {str(run.path)!r}: it has no config.toml (not a run folder)")
            if process_state().is_main_process:
                run.lock()  # one writer per run folder, from here until this process ends
            return run
        if process_state().is_main_process:
            run.lock()  # before looking inside: a run starting at the same moment cannot slip in between
            if not run.is_empty() and not run.list_checkpoints() and run.config.exists() and not run.lora.exists():
                logger.warning("%s holds a start that failed before its first checkpoint: starting afresh", run.path)
                run.clear()
        if not run.is_empty():
            raise ConfigError(f"run folder {str(run.path)!r} already exists and is not empty: choose another run.name or --resume it")
        return run

    def _resume(self) -> None:
        """Continue from the newest intact checkpoint; repair what a crash may have left behind."""
        if self.accelerator.is_main_process:
            for leftover in self.run.remove_leftovers():
                logger.info("removed %s (left by an interrupted write)", leftover)
        checkpoints = self.run.list_checkpoints()
        if not checkpoints:  # keep epoch 0's evaluation (an app session that was opened but never trained shows it)
            logger.info("%s has no checkpoint: starting from epoch 1", self.run.path)
            if self.accelerator.is_main_process:
                self.run.write_metrics([m for m in self.run.read_metrics() if m["epoch"] == 0])
            return
        for path in reversed(checkpoints):
            try:
                trainable, optimizer_state, state = RunFolder.load_checkpoint(path)
                load_trainable_state_dict(self.accelerator.unwrap_model(self.denoiser), trainable)
                self.optimizer.load_state_dict(optimizer_state)
                self.tracker.load_state_dict(state["tracker"])
                break
            except (OSError, ValueError, KeyError, SafetensorError) as error:  # a truncated file, bad JSON, ...
                logger.warning("checkpoint %s is damaged (%s): trying the one before it", path, error)
        else:
            raise ConfigError(f"cannot resume {str(self.run.path)!r}: every checkpoint is damaged ({', '.join(p.name for p in checkpoints)})")
        self.start_epoch = state["epoch"] + 1
        if self.accelerator.is_main_process:
            self.run.write_metrics([m for m in self.run.read_metrics() if m["epoch"] <= state["epoch"]])
            self._save_weights()  # the loadable lora/ (or denoiser) always matches the checkpoint resumed from
        logger.info("resumed %s from epoch %d", self.run.path, state["epoch"])

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
            self.log_epoch({"epoch": 0, **self.evaluate(0)})

    def step(self, epoch: int) -> dict:
        """Run, log and (when due) checkpoint one epoch; return its metrics."""
        record = self.run_epoch(epoch)
        self.log_epoch(record)
        if epoch % self.config.run.checkpoint_every == 0 or epoch == self.config.run.num_epochs:
            self.save_checkpoint(epoch)
        return record

    def run_epoch(self, epoch: int, evaluate: bool = True) -> dict:
        """One epoch: sample -> reward -> advantage -> update -> evaluate. Returns its metrics."""
        start = time.perf_counter()
        trajectories = self.sample(epoch)
        sampled = time.perf_counter()
        metadata = [{**extra, "prompt": p, "epoch": epoch} for p, extra in zip(trajectories.prompts, self._metadata)]
        heatmaps = self.reward(trajectories.images, trajectories.prompts, metadata)
        terms = self.reward_terms()
        rewarded = time.perf_counter()
        batch = Batch(trajectories, heatmaps, self.advantages(heatmaps, trajectories.prompts))
        stats = self.update(batch, epoch)
        trained = time.perf_counter()
        evaluation = self.evaluate(epoch) if evaluate else {}
        image_rewards = self.accelerator.gather(heatmaps.mean(dim=(1, 2)))
        return {
            "epoch": epoch,
            "reward_mean": image_rewards.mean().item(),
            "reward_std": image_rewards.std(unbiased=False).item(),
            **{f"reward_term_{name}": value for name, value in terms.items()},
            **stats,
            "sample_seconds": sampled - start,
            "reward_seconds": rewarded - sampled,
            "train_seconds": trained - rewarded,
            **evaluation,
        }

    # sample ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, epoch: int) -> Trajectories:
        """Sample this epoch's trajectories with the current policy."""
        cfg, acc = self.config.sample, self.accelerator
        process = acc.process_index
        prompt_rng = torch.Generator().manual_seed(epoch_seed(self.config.run.seed, epoch, "prompts", process))
        if cfg.single_image_seed is not None and cfg.single_image_noise == "fixed":  # the image: a function of the weights alone
            noise_seed = epoch_seed(cfg.single_image_seed, 0, "single_image_steps")
        else:
            noise_seed = epoch_seed(self.config.run.seed, epoch, "sample", process)
        noise_rng = torch.Generator(device=acc.device).manual_seed(noise_seed)
        self.family.denoiser.eval()
        if cfg.single_image_seed is not None:  # the same x_T every epoch; the steps' noise fixed too, or fresh
            self._metadata = [{}]
            return self._sample([cfg.prompts[0]], noise_rng, self._single_image_noise())
        parts, self._metadata = [], []
        for b in range(cfg.num_batches_per_epoch):
            # batch_size / group_size prompts, each sampled group_size times in a row (a GRPO group)
            groups = [self._draw_prompt(prompt_rng) for _ in range(cfg.batch_size // cfg.group_size)]
            prompts = [prompt for prompt, _ in groups for _ in range(cfg.group_size)]
            self._metadata += [dict(extra) for _, extra in groups for _ in range(cfg.group_size)]
            parts.append(self._sample(prompts, noise_rng, desc=f"sampling {b + 1}/{cfg.num_batches_per_epoch}"))
        return Trajectories.cat(parts)

    def _draw_prompt(self, generator: torch.Generator) -> tuple[str, dict]:
        """One group's prompt and metadata: from prompt_fn, or uniformly from sample.prompts."""
        if self.prompt_fn is not None:
            prompt, metadata = self.prompt_fn(generator)
            if not isinstance(prompt, str) or not prompt.strip() or not isinstance(metadata, dict):
                raise ValueError(f"prompt_fn returned ({prompt!r}, {type(metadata).__name__}): expected (a non-empty prompt, a dict)")
            return prompt, metadata
        prompts = self.config.sample.prompts
        return prompts[int(torch.randint(len(prompts), (1,), generator=generator))], {}

    def _sample(self, prompts: list[str], generator, initial_noise: torch.Tensor | None = None, desc: str | None = None) -> Trajectories:
        """Trajectories of the current policy with the config's sampler settings."""
        cfg = self.config.sample
        with self.accelerator.autocast():
            return sample_trajectories(
                self.family,
                prompts,
                num_steps=cfg.num_steps,
                guidance_scale=cfg.guidance_scale,
                noise_level=self.noise_level,
                generator=generator,
                height=cfg.height,
                width=cfg.width,
                initial_noise=initial_noise,
                progress=desc is not None and self._show_progress,
                desc=desc or "sampling",
            )

    def _single_image_noise(self) -> torch.Tensor:
        """Single-image mode's initial latents [1, C, h, w], drawn from sample.single_image_seed."""
        generator = torch.Generator(device=self.accelerator.device).manual_seed(self.config.sample.single_image_seed)
        return self.family.initial_noise(1, self.latent_shape, generator)

    # reward ----------------------------------------------------------------------------------------
    def reward(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        """Pixel rewards [B, H, W] for images [B, 3, H, W], checked for shape and finiteness."""
        heatmaps = self.reward_fn(images, list(prompts), list(metadata))
        return check_heatmaps(heatmaps, images, self.reward_name).to(images.device)

    def reward_terms(self) -> dict[str, float]:
        """Each term's mean reward over all processes' images of the last reward call (several rewards only)."""
        if not isinstance(self.reward_fn, WeightedReward):
            return {}
        return {name: self.accelerator.gather(values).mean().item() for name, values in self.reward_fn.last_terms.items()}

    # advantage -------------------------------------------------------------------------------------
    def advantages(self, heatmaps: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Advantages of this process's samples, normalised with statistics over all processes.

        PXPO: the heatmaps on the latent grid [B, 1, h, w]; DDPO: each image's pixel mean [B].
        """
        cfg, acc = self.config, self.accelerator
        if cfg.train.algorithm == "pxpo":
            rewards = heatmap_to_latent(heatmaps, self.latent_shape[1:], cfg.advantage.interpolation)
        else:
            rewards = heatmaps.mean(dim=(1, 2))
        all_rewards = acc.gather(rewards)
        all_prompts = gather_object(list(prompts)) if acc.num_processes > 1 else list(prompts)
        advantages = compute_advantages(
            all_rewards, all_prompts, cfg.advantage.normalization, cfg.train.adv_clip_max, self.tracker, cfg.sample.group_size
        )
        return advantages.reshape(acc.num_processes, -1, *rewards.shape[1:])[acc.process_index]

    # update ----------------------------------------------------------------------------------------
    def update(self, batch: Batch, epoch: int) -> dict:
        """PPO inner epochs over shuffled samples and a random subset of steps; returns mean diagnostics.

        Each training batch's steps go through the denoiser ``train.timesteps_per_forward`` at a time; their
        gradients are summed (accelerate's accumulation) and the optimizer steps once per
        ``train.gradient_accumulation_steps`` batches, as in DDPO.
        """
        cfg, acc = self.config, self.accelerator
        trajectories, advantages = batch.trajectories, batch.advantages
        totals = {"loss": 0.0, "approx_kl": 0.0, "clipfrac": 0.0, **({"kl": 0.0} if cfg.train.kl_coef > 0 else {})}
        if not acc.gather(advantages.abs().amax().reshape(1)).any():
            # nothing to learn (e.g. an all-zero painted map): no optimiser step at all, since Adam's momentum and
            # weight decay would still move the weights, and the shown image must change only when there is feedback
            return {**totals, "grad_norm": 0.0}
        n, num_steps = len(trajectories), trajectories.timesteps.shape[0]
        rng = torch.Generator().manual_seed(epoch_seed(cfg.run.seed, epoch, "shuffle", acc.process_index))
        loss_fn = pxpo_loss if cfg.train.algorithm == "pxpo" else ddpo_loss
        chunks = self._timestep_chunks()
        grad_norms = []
        self.denoiser.train()
        steps = bar(total=cfg.train.num_inner_epochs * (n // cfg.train.batch_size) * len(chunks), desc="training",
                    enabled=self._show_progress)  # fmt: skip
        for _ in range(cfg.train.num_inner_epochs):
            order = torch.randperm(n, generator=rng)
            step_order = torch.stack([torch.randperm(num_steps, generator=rng) for _ in range(n)])  # [n, T]
            for rows in order.split(cfg.train.batch_size):
                for chunk in chunks:
                    # every (sample, step) pair of this chunk as one flat batch [b * k]
                    step_index = step_order[rows][:, chunk].reshape(-1).to(trajectories.latents.device)
                    sample_index = rows.repeat_interleave(len(chunk)).to(trajectories.latents.device)
                    # a chunk's loss is the mean over its steps; weighting by its share of the steps makes the
                    # accumulated gradient the mean over all trained steps, whatever the chunk sizes
                    weight = len(chunk) * len(chunks) / cfg.num_train_timesteps
                    raise_if_stopped()
                    with acc.accumulate(self.denoiser):
                        output = self._loss(loss_fn, trajectories, advantages, sample_index, step_index)
                        acc.backward(output.loss * weight)
                        if acc.sync_gradients:
                            grad_norms.append(float(acc.clip_grad_norm_(self.params, cfg.train.max_grad_norm)))
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    for key in totals:
                        totals[key] += getattr(output, key).item() * len(chunk)
                    steps.update()
        steps.close()
        count = cfg.train.num_inner_epochs * (n // cfg.train.batch_size) * cfg.num_train_timesteps
        stats = {**{k: v / count for k, v in totals.items()}, "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0}
        if acc.num_processes > 1:  # every rank's diagnostics, not rank 0's alone
            means = acc.reduce(torch.tensor(list(stats.values()), device=acc.device), reduction="mean")
            stats = dict(zip(stats, means.tolist()))
        return stats

    def _timestep_chunks(self) -> list[list[int]]:
        """Columns of the per-sample step order trained together: [[0..k-1], [k..2k-1], ...]."""
        steps, k = self.config.num_train_timesteps, self.config.train.timesteps_per_forward
        return [list(range(i, min(i + k, steps))) for i in range(0, steps, k)]

    def _loss(self, loss_fn, trajectories: Trajectories, advantages: torch.Tensor, rows: torch.Tensor, step_index: torch.Tensor) -> LossOutput:
        """The policy loss of these (sample, step) pairs, plus ``kl_coef`` times the KL to the reference policy."""
        step = self._log_prob(self.denoiser, trajectories, rows, step_index)
        old = trajectories.log_probs[rows, step_index]
        train = self.config.train
        if train.algorithm == "ddpo":
            output = loss_fn(step.log_prob.mean(dim=(1, 2, 3)), old.mean(dim=(1, 2, 3)), advantages[rows], train.clip_range)
        else:
            output = loss_fn(step.log_prob, old, advantages[rows], train.clip_range)
        if train.kl_coef > 0:
            denoiser = self.accelerator.unwrap_model(self.denoiser)
            denoiser.disable_adapters()  # the reference policy: the same weights without the LoRA
            try:
                with torch.no_grad():
                    reference = self._log_prob(denoiser, trajectories, rows, step_index)
            finally:
                denoiser.enable_adapters()
            output.kl = kl_to_reference(step.mean, reference.mean, step.std)
            output.loss = output.loss + train.kl_coef * output.kl
        return output

    def _log_prob(self, denoiser: torch.nn.Module, trajectories: Trajectories, rows: torch.Tensor, step_index: torch.Tensor) -> StepOutput:
        with self.accelerator.autocast():
            return recompute_log_prob(
                self.family, denoiser, trajectories, rows, step_index,
                guidance_scale=self.config.sample.guidance_scale, noise_level=self.noise_level,
            )  # fmt: skip

    # evaluate ------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict:
        """Fixed-seed samples of the current policy, saved and scored by the reporter (main process)."""
        if not self.accelerator.is_main_process:
            return {}
        start = time.perf_counter()
        images = self.eval_images(epoch)
        record = self.reporter.evaluation(epoch, images)
        for tracker in self.accelerator.trackers:  # TensorBoard takes a tensor [N, 3, H, W]; the others PIL images
            values = {"eval_images": images.float().cpu()} if tracker.name == "tensorboard" else {"eval_images": [to_pil(i) for i in images]}
            with contextlib.suppress(NotImplementedError, AttributeError):
                tracker.log_images(values, step=epoch)
        return {**record, "eval_seconds": time.perf_counter() - start}

    @torch.no_grad()
    def eval_images(self, epoch: int) -> torch.Tensor:
        """The current policy's images [N, 3, H, W] for the fixed evaluation seeds, after ``epoch`` epochs.

        In single-image mode this is the trajectory that epoch + 1 will sample and train on, so the
        image a person judges is exactly the one their feedback trains (with ``sample.single_image_noise =
        "fixed"``, the default, it changes only when the weights do).
        """
        if self.config.sample.single_image_seed is not None:
            return self.sample(epoch + 1).images
        device = self.accelerator.device
        generators = [torch.Generator(device=device).manual_seed(s) for s in self.config.eval.seeds]
        self.family.denoiser.eval()
        return self._sample(eval_prompts(self.config), generators, desc="evaluating").images

    @torch.no_grad()
    def single_image_draws(self, num_draws: int, seed: int = 10_000) -> torch.Tensor:
        """Single-image mode: the image's x_T finished with ``num_draws`` other step-noise draws [N, 3, H, W].

        One shown image is one draw of the policy; averaging a measurement over these draws tells what the
        policy now makes of this image, rather than what one draw happened to show.
        """
        if self.config.sample.single_image_seed is None:
            raise ValueError("single_image_draws needs single-image mode (sample.single_image_seed)")
        generators = [torch.Generator(device=self.accelerator.device).manual_seed(seed + i) for i in range(num_draws)]
        self.family.denoiser.eval()
        x_T = self._single_image_noise().expand(num_draws, -1, -1, -1)
        return self._sample([self.config.sample.prompts[0]] * num_draws, generators, x_T).images

    # outputs ---------------------------------------------------------------------------------------
    def log_epoch(self, record: dict) -> None:
        """Append an epoch's metrics and redraw the figures (main process)."""
        if self.accelerator.is_main_process:
            self.reporter.log_epoch(record)
            for callback in self.callbacks:
                callback(self, record)
        if self.config.run.log_with:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "epoch"}
            self.accelerator.log(numbers, step=record["epoch"])

    def save_checkpoint(self, epoch: int) -> None:
        """Checkpoint (weights, optimizer, advantage statistics) and the loadable LoRA or denoiser."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        denoiser = acc.unwrap_model(self.denoiser)
        self.run.save_checkpoint(
            epoch,
            trainable_state_dict(denoiser),
            self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
            {"tracker": self.tracker.state_dict()},
            keep=self.config.run.keep_checkpoints,
        )
        self._save_weights()

    def _save_weights(self) -> None:
        """The loadable weights: lora/ (``pipe.load_lora_weights``) or the whole denoiser's folder."""
        denoiser = self.accelerator.unwrap_model(self.denoiser)
        if self.config.model.lora:
            self.family.save_lora(denoiser, self.run.lora)
        else:
            with atomic_directory(self.run.denoiser(self.family.denoiser_name)) as tmp:
                denoiser.save_pretrained(tmp, safe_serialization=True)

    @property
    def _show_progress(self) -> bool:
        return self.progress and self.accelerator.is_main_process

