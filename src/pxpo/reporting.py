"""What a run shows a person after each epoch: evaluation images and rewards, metrics, figures, log lines.

The trainer makes the evaluation images (sampling is its business); the ``Reporter`` saves them in
the run folder, scores them with the reward, appends the epoch's metrics and redraws the reward curve
and the evolution grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from pxpo.config import Config
from pxpo.plots import pick_columns, plot_image_grid, plot_reward_curve
from pxpo.run_folder import RunFolder
from pxpo.schedule import eval_prompts

logger = logging.getLogger(__name__)

MAX_EVOLUTION_COLUMNS = 8
MAX_EVOLUTION_ROWS = 8
SHOWN_METRICS = ("reward_mean", "eval_reward_mean", "approx_kl", "clipfrac", "kl")


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

    def evaluation(self, epoch: int, images: torch.Tensor) -> dict:
        """Save the fixed-seed images [N, 3, H, W] of ``epoch``; their mean and std reward when eval.reward is on."""
        seeds, prompts = self.config.eval.seeds, eval_prompts(self.config)
        self.run.save_eval_images(epoch, images, seeds)
        if not self.config.eval.reward:
            return {}
        metadata = [{"prompt": p, "seed": s, "epoch": epoch} for p, s in zip(prompts, seeds)]
        rewards = self.reward(images, prompts, metadata).mean(dim=(1, 2))
        return {"eval_reward_mean": rewards.mean().item(), "eval_reward_std": rewards.std(unbiased=False).item()}

    def log_epoch(self, record: dict) -> None:
        """Append an epoch's metrics and redraw the reward curve and evolution grid."""
        metrics = self.run.append_metrics(record)
        title = f"{self.config.train.algorithm.upper()} - {self.reward_name}"
        plot_reward_curve(metrics, self.run.reward_curve, title=title)
        self.plot_evolution(metrics)
        shown = {k: round(v, 4) for k, v in record.items() if k in SHOWN_METRICS}
        logger.info("epoch %d %s", record["epoch"], shown)

    def plot_evolution(self, metrics: Sequence[dict]) -> None:
        """Rows: the first MAX_EVOLUTION_ROWS evaluation seeds; columns: epochs (at most MAX_EVOLUTION_COLUMNS, evenly spread)."""
        epochs = [m["epoch"] for m in metrics]
        columns = pick_columns(epochs, MAX_EVOLUTION_COLUMNS)
        seeds = self.config.eval.seeds[:MAX_EVOLUTION_ROWS]
        grid = [[self.run.eval_image_path(e, s) for e in columns] for s in seeds]
        plot_image_grid(
            grid,
            [f"seed {s}" for s in seeds],
            [f"epoch {e}" for e in columns],
            self.run.evolution,
            title=f"{self.config.train.algorithm.upper()}: {', '.join(dict.fromkeys(eval_prompts(self.config)))}",
        )
