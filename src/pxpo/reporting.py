"""What a run shows a person after each epoch: evaluation images and rewards, metrics, figures, log lines.

The trainer makes the evaluation images (sampling is its business); the ``Reporter`` saves them in
the run folder, scores them with the reward, appends the epoch's metrics and redraws the reward curve
and the evolution grid. The epoch lines and ``pxpo train``'s summary are written by the pure functions
below (``epoch_line``, ``reward_change``, ...), so that what a person reads is tested without training.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from pxpo.config import Config
from pxpo.plots import describe_columns, pick_columns, plot_image_grid, plot_reward_curve
from pxpo.run_folder import RunFolder
from pxpo.schedule import eval_prompts

logger = logging.getLogger(__name__)

MAX_EVOLUTION_COLUMNS = 11  # every epoch of a run of up to 10 epochs (and epoch 0)
MAX_EVOLUTION_ROWS = 8
ON_POLICY_ZEROS = ("approx_kl", "clipfrac")  # 0 by construction when every epoch makes one optimizer step
OPEN_ENDED = 1_000_000  # run.num_epochs of runs without a planned length (the app's sessions): no "/N" in epoch lines
TIMINGS = ("sample_seconds", "reward_seconds", "train_seconds", "eval_seconds", "report_seconds")


class Reporter:
    """Saves, scores and plots a run's evaluations and metrics (main process only).

    Args:
        config: the run's config.
        run: its run folder.
        reward: ``fn(images, prompts, metadata) -> heatmaps [N, H, W]`` (checked), for eval rewards.
        reward_name: how the reward is named in figure titles.
    """

    def __init__(self, config: Config, run: RunFolder, reward: Callable[..., torch.Tensor], reward_name: str) -> None:
        self.config = config
        self.run = run
        self.reward = reward
        self.reward_name = reward_name
        self._legend_logged = False

    def evaluation(self, epoch: int, images: torch.Tensor) -> dict:
        """Save the fixed-seed images [N, 3, H, W] of ``epoch``; when eval.reward is on, their mean and std reward
        and each image's reward (``eval_rewards``, in the order of eval.seeds)."""
        seeds, prompts = self.config.eval.seeds, eval_prompts(self.config)
        self.run.save_eval_images(epoch, images, seeds)
        if not self.config.eval.reward:
            return {}
        metadata = [{"prompt": p, "seed": s, "epoch": epoch} for p, s in zip(prompts, seeds)]
        rewards = self.reward(images, prompts, metadata).mean(dim=(1, 2))
        return {
            "eval_reward_mean": rewards.mean().item(),
            "eval_reward_std": rewards.std(unbiased=False).item(),
            "eval_rewards": [float(r) for r in rewards.tolist()],
        }

    def log_epoch(self, record: dict) -> None:
        """Append an epoch's metrics, redraw the reward curve and evolution grid, and log the epoch's line (its time:
        the epoch's phases and these figures)."""
        start = time.perf_counter()
        metrics = self.run.append_metrics(record)
        plot_reward_curve(metrics, self.run.reward_curve, title=figure_title(self.config, self.reward_name))
        self.plot_evolution(metrics)
        if not self._legend_logged:
            logger.info("%s", epoch_legend(self.config))
            self._legend_logged = True
        shown = {**record, "report_seconds": time.perf_counter() - start}
        logger.info("%s", epoch_line(shown, self.config.run.num_epochs, hidden=constant_diagnostics(self.config)))

    def plot_evolution(self, metrics: Sequence[dict]) -> None:
        """Rows: the first MAX_EVOLUTION_ROWS evaluation seeds; columns: epochs (every one, or at most
        MAX_EVOLUTION_COLUMNS evenly spaced, always the first and the last); each image's reward under it."""
        by_epoch = {m["epoch"]: m for m in metrics}
        epochs = sorted(by_epoch)
        columns = pick_columns(epochs, MAX_EVOLUTION_COLUMNS)
        all_seeds = self.config.eval.seeds
        seeds = all_seeds[:MAX_EVOLUTION_ROWS]
        grid = [[self.run.eval_image_path(e, s) for e in columns] for s in seeds]
        captions = [[_image_reward(by_epoch[e], row) for e in columns] for row in range(len(seeds))]
        notes = [describe_columns(columns, epochs)]
        if len(seeds) < len(all_seeds):
            notes.append(f"{len(seeds)} of {len(all_seeds)} seeds")
        if any(c for row in captions for c in row):
            notes.append("under each image: its mean pixel reward")
        prompts = ", ".join(dict.fromkeys(eval_prompts(self.config)))
        title = f"{figure_title(self.config, self.reward_name)}: {prompts}"
        if any(notes):
            title += "\n" + "; ".join(n for n in notes if n)
        plot_image_grid(grid, [f"seed {s}" for s in seeds], [f"epoch {e}" for e in columns], self.run.evolution, title=title,
                        captions=captions)  # fmt: skip


def _image_reward(record: dict, index: int) -> str:
    rewards = record.get("eval_rewards")
    return f"{rewards[index]:.3f}" if rewards is not None and index < len(rewards) else ""


def model_label(pretrained: str, max_length: int = 40) -> str:
    """How a model is named in a figure's title: its name or hub id, or a long folder's last part."""
    return pretrained if len(pretrained) <= max_length else f".../{Path(pretrained).name}"


def figure_title(config: Config, reward_name: str) -> str:
    """``PXPO, reward blue_penalty, model pxpo-tiny``: what trained what on which reward."""
    return f"{config.train.algorithm.upper()}, reward {reward_name}, model {model_label(config.model.pretrained)}"


def optimizer_steps_per_epoch(config: Config) -> int:
    """Optimizer steps per epoch (per process): inner epochs x training batches / gradient accumulation."""
    batches = config.sample.batch_size * config.sample.num_batches_per_epoch // config.train.batch_size
    return config.train.num_inner_epochs * max(1, batches // config.train.gradient_accumulation_steps)


def constant_diagnostics(config: Config) -> tuple[str, ...]:
    """Diagnostics that cannot move in this run: with one optimizer step per epoch, every update is on-policy (the
    ratio of new to old log-probability is 1), so approx_kl and clipfrac are 0 by construction (and so is a preservation
    term measured against the sampling policy)."""
    if optimizer_steps_per_epoch(config) != 1:
        return ()
    return ON_POLICY_ZEROS + (("preserve",) if getattr(config.train, "preserve_reference", None) == "sampling" else ())


def _decimals(*values: float | None) -> int:
    """At least 3 decimals; more for small numbers (three significant digits of the largest)."""
    scale = max(abs(v) for v in (*values, 0.0) if v is not None and math.isfinite(v))
    return 3 if scale == 0 else min(6, max(3, 2 - math.floor(math.log10(scale))))


def plus_minus(mean: float, std: float | None, decimals: int | None = None) -> str:
    """``-0.336 ± 0.041``, ``-0.0173 ± 0.0041``: mean and std with the same decimals."""
    decimals = _decimals(mean, std) if decimals is None else decimals
    return f"{mean:.{decimals}f}" + ("" if std is None else f" ± {std:.{decimals}f}")


def _number(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e3 else f"{value:.4f}".rstrip("0").rstrip(".")


def epoch_line(record: dict, num_epochs: int, hidden: Sequence[str] = ()) -> str:
    """One epoch as a person reads it: ``epoch 3/8  reward -0.336 ± 0.041  eval -0.301 ± 0.052  kl 0.012  (12.3 s)``.

    ``reward``: the training images' mean pixel reward ± std over images; ``eval``: the same over the fixed evaluation
    seeds; then each reward term, the diagnostics that can move (``hidden``: those that cannot, see
    ``constant_diagnostics``) and the epoch's wall time.
    """
    parts = [f"epoch {record['epoch']}" + (f"/{num_epochs}" if num_epochs < OPEN_ENDED else "")]
    if "reward_mean" in record:
        parts.append(f"reward {plus_minus(record['reward_mean'], record.get('reward_std'))}")
    if "eval_reward_mean" in record:
        parts.append(f"eval {plus_minus(record['eval_reward_mean'], record.get('eval_reward_std'))}")
    terms = [f"{k.removeprefix('reward_term_')} {plus_minus(v, None)}" for k, v in record.items() if k.startswith("reward_term_")]
    if terms:
        parts.append(f"(terms: {', '.join(terms)})")
    for key, label in (("kl", "kl to base"), ("preserve", "preserve"), ("approx_kl", "approx_kl"), ("clipfrac", "clipfrac")):
        if key in record and key not in hidden:
            parts.append(f"{label} {_number(record[key])}")
    seconds = sum(record.get(k, 0.0) for k in TIMINGS)
    where = "base model, " if record["epoch"] == 0 else ""
    if seconds or where:
        parts.append(f"({where}{seconds:.1f} s)")
    return "  ".join(parts)


def epoch_legend(config: Config) -> str:
    """What the epoch lines' numbers are (logged once, above the first)."""
    seeds = len(config.eval.seeds)
    text = "reward = mean pixel reward of the epoch's training images ± std over images"
    if config.eval.reward:
        text += f"; eval = the same over {seeds} fixed seed{'s' * (seeds != 1)}"
    hidden = constant_diagnostics(config)
    if hidden:
        text += f" ({', '.join(hidden)}: 0 with one optimizer step per epoch, not shown)"
    return text


# pxpo train's summary ------------------------------------------------------------------------------
def reward_change(metrics: Sequence[dict]) -> str | None:
    """``eval reward: -0.395 ± 0.120 (epoch 0) -> -0.291 ± 0.105 (epoch 8)``, or None without evaluation rewards."""
    evals = [m for m in metrics if "eval_reward_mean" in m]
    if not evals:
        return None
    first, last = evals[0], evals[-1]
    decimals = _decimals(*(m.get(k) for m in (first, last) for k in ("eval_reward_mean", "eval_reward_std")))

    def show(m: dict) -> str:
        return f"{plus_minus(m['eval_reward_mean'], m.get('eval_reward_std'), decimals)} (epoch {m['epoch']})"

    return f"eval reward: {show(first)} -> {show(last)}"


def trackers_line(run_path: str | Path, log_with: Sequence[str]) -> str | None:
    """Where the trackers' files are, and how to look at TensorBoard's; None without trackers."""
    if not log_with:
        return None
    folder = Path(run_path) / "trackers"
    line = f"trackers ({', '.join(log_with)}): {folder}/"
    if "tensorboard" in log_with:
        line += f"  (tensorboard --logdir {folder})"
    return line


def nothing_left_message(run_path: str | Path, done: int, num_epochs: int) -> str:
    """For a resume of a run that has already trained all of its ``run.num_epochs``."""
    return (
        f"nothing to train: {run_path} has trained {done} epoch{'s' * (done != 1)} and run.num_epochs = {num_epochs}. "
        f"To train longer, raise run.num_epochs above {done}, e.g. pxpo train --resume {run_path} --set run.num_epochs={2 * done}"
    )
