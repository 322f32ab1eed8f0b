"""Figures of a run: the reward curve and the image-evolution grid (the paper's Fig. 3 layout)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pxpo.io import atomic_file  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    """Write a figure as PNG atomically and close it (every figure pxpo and its benchmarks draw goes through here)."""
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_reward_curve(metrics: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Training reward (mean +- std over images), evaluation reward and each reward term against epoch."""
    train = [m for m in metrics if "reward_mean" in m]
    evals = [m for m in metrics if "eval_reward_mean" in m]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if train:
        x = np.array([m["epoch"] for m in train])
        mean = np.array([m["reward_mean"] for m in train])
        std = np.array([m["reward_std"] for m in train])
        ax.plot(x, mean, marker="o", label="training samples")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    if evals:
        ax.plot([m["epoch"] for m in evals], [m["eval_reward_mean"] for m in evals], marker="s", label="fixed eval seeds")
    for term in sorted({k for m in train for k in m if k.startswith("reward_term_")}):  # several rewards: each term
        points = [(m["epoch"], m[term]) for m in train if term in m]
        ax.plot(*zip(*points), linestyle="--", linewidth=1, label=f"term {term.removeprefix('reward_term_')} (unweighted)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean pixel reward")
    ax.set_title(title, parse_math=False)  # prompts are plain text: "$5 taxi" is not TeX
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    save_figure(fig, Path(path))


def pick_columns(epochs: Sequence[int], max_columns: int) -> list[int]:
    """At most ``max_columns`` epochs, evenly spread, always the first and the last."""
    epochs = sorted(epochs)
    if len(epochs) <= max_columns:
        return epochs
    picks = np.linspace(0, len(epochs) - 1, max_columns).round().astype(int)
    return [epochs[i] for i in dict.fromkeys(picks.tolist())]


def plot_image_grid(
    grid: Sequence[Sequence[Path]], row_labels: Sequence[str], column_labels: Sequence[str], path: str | Path, title: str = ""
) -> None:
    """A grid of image files: grid[row][column]."""
    rows, columns = len(grid), len(grid[0])
    fig, axes = plt.subplots(rows, columns, figsize=(1.4 * columns + 0.6, 1.4 * rows + 0.4), squeeze=False, layout="compressed")
    for r, row in enumerate(grid):
        for c, image_path in enumerate(row):
            ax = axes[r][c]
            ax.imshow(np.asarray(Image.open(image_path).convert("RGB")), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_labels[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9, parse_math=False)
    save_figure(fig, Path(path))
