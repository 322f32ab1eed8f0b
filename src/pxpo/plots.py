"""Figures of a run: the reward curve and the image-evolution grid (the paper's Fig. 3 layout)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from pxpo.io import atomic_file  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    """Write a figure as PNG atomically and close it (every figure pxpo and its benchmarks draw goes through here)."""
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_reward_curve(metrics: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Training reward (mean +- std over images), evaluation reward (mean +- std over seeds) and each reward term
    against epoch (integer ticks)."""
    train = [m for m in metrics if "reward_mean" in m]
    evals = [m for m in metrics if "eval_reward_mean" in m]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if train:
        x = np.array([m["epoch"] for m in train])
        mean = np.array([m["reward_mean"] for m in train])
        std = np.array([m["reward_std"] for m in train])
        (line,) = ax.plot(x, mean, marker="o", label="training samples (mean)")
        band = "training samples (± std over images)"
        ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color(), label=band)
        if len(train) == 1:  # a band over one epoch has no width
            ax.errorbar(x, mean, yerr=std, fmt="none", color=line.get_color(), alpha=0.5, capsize=4)
    if evals:
        x = np.array([m["epoch"] for m in evals])
        mean = np.array([m["eval_reward_mean"] for m in evals])
        (line,) = ax.plot(x, mean, marker="s", label="fixed eval seeds (mean)")
        if all("eval_reward_std" in m for m in evals):
            std = np.array([m["eval_reward_std"] for m in evals])
            ax.fill_between(x, mean - std, mean + std, alpha=0.12, color=line.get_color(), hatch="///", linewidth=0,
                            label="fixed eval seeds (± std over seeds)")  # fmt: skip
    for term in sorted({k for m in train for k in m if k.startswith("reward_term_")}):  # several rewards: each term
        points = [(m["epoch"], m[term]) for m in train if term in m]
        ax.plot(*zip(*points), linestyle="--", linewidth=1, label=f"term {term.removeprefix('reward_term_')} (unweighted)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers, also in short runs
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean pixel reward")
    ax.set_title(title, parse_math=False, fontsize=10)  # prompts are plain text: "$5 taxi" is not TeX
    ax.grid(alpha=0.3)
    if train or evals:  # below the axes: a legend inside would hide a part of the bands
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    save_figure(fig, Path(path))


def pick_columns(epochs: Sequence[int], max_columns: int) -> list[int]:
    """Every epoch when there are at most ``max_columns``; otherwise every k-th (the smallest k that fits), always
    the first and the last."""
    epochs = sorted(epochs)
    if len(epochs) <= max_columns:
        return epochs
    step = math.ceil((len(epochs) - 1) / (max_columns - 1))
    picked = epochs[::step]
    return picked if picked[-1] == epochs[-1] else [*picked, epochs[-1]]


def describe_columns(shown: Sequence[int], epochs: Sequence[int]) -> str:
    """Which of ``epochs`` a grid shows, when it leaves some out: ``epochs 0, 2, 4, ..., 20 of 0-20``; "" when all."""
    shown, epochs = list(shown), sorted(epochs)
    if shown == epochs:
        return ""
    span = f"{epochs[0]}-{epochs[-1]}"
    if len(shown) <= 6:
        return f"epochs {', '.join(map(str, shown))} of {span}"
    regular = shown[:-1] if shown[-1] - shown[-2] != shown[1] - shown[0] else shown
    tail = [regular[-1]] + ([shown[-1]] if regular is not shown else [])
    return f"epochs {', '.join(map(str, shown[:3]))}, ..., {', '.join(map(str, tail))} of {span}"


def plot_image_grid(
    grid: Sequence[Sequence[Path]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    path: str | Path,
    title: str = "",
    captions: Sequence[Sequence[str]] | None = None,
) -> None:
    """A grid of image files: grid[row][column]; ``captions[row][column]``: a line under each image (e.g. its reward)."""
    rows, columns = len(grid), len(grid[0])
    captioned = captions is not None and any(c for row in captions for c in row)
    height = 1.4 * rows + 0.4 + (0.15 * rows if captioned else 0) + (0.15 * title.count("\n") if title else 0)
    fig, axes = plt.subplots(rows, columns, figsize=(1.4 * columns + 0.6, height), squeeze=False, layout="compressed")
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
            if captioned and captions[r][c]:
                ax.set_xlabel(captions[r][c], fontsize=7, labelpad=1)
    if title:
        fig.suptitle(title, fontsize=9, parse_math=False)
    save_figure(fig, Path(path))
