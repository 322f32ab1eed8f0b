"""PXPO against scalar GRPO on the bundled flow-matching model (pxpo-tiny-flow), at equal reward queries.

Tasks (from sample_efficiency.py): blue (blue penalty, "red taxi in traffic") and hair (minus the
bundled segmenter's hair confidence, "portrait of a man on the beach"); 8 images per epoch in groups of
4, Flow-GRPO's SDE (noise level 0.7), 10 steps. Scalar GRPO is the scalar loss (``train.algorithm =
"ddpo"``: one advantage per image, element-mean log-probability) with group normalisation; PXPO uses
the same groups with per-pixel advantages.

Three stages per task, every run with several seeds (mean ± std over seeds):
  1. learning-rate sweep of both methods with ``advantage.normalization = "group"`` and no KL;
  2. at each method's best learning rate: the normalisations "batch", "group" and "group_location";
  3. at the same learning rate and "group": ``train.kl_coef`` > 0.
Reported: improvement of the evaluation reward (fixed seeds) after the budget, the reward curve, and
the context change (mean |pixel change| 0-255 between first and last evaluation images on pixels of
classes the task does not target).

    python benchmarks/flow_sample_efficiency.py --tasks blue     # one task per process
    python benchmarks/flow_sample_efficiency.py --tasks hair
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pxpo.config import validate_config  # noqa: E402
from pxpo.io import atomic_write_text  # noqa: E402
from pxpo.plots import save_figure  # noqa: E402
from pxpo.trainer import Trainer  # noqa: E402
from sample_efficiency import TASKS, context_change  # noqa: E402  (benchmarks/ is on the path of its scripts)

METHODS = {"pxpo": "PXPO", "ddpo": "scalar GRPO"}


def run_once(task: str, method: str, lr: float, normalization: str, kl: float, seed: int, args, folder: str) -> dict:
    spec = TASKS[task]
    samples = args.samples
    config = validate_config({
        "model": {"pretrained": args.model},
        "sample": {**spec["sample"], "batch_size": samples, "group_size": args.group_size, "num_steps": args.num_steps,
                   "noise_level": args.noise_level, "guidance_scale": args.guidance_scale},
        "train": {"batch_size": samples, "algorithm": method, "learning_rate": lr, "kl_coef": kl,
                  "timesteps_per_forward": min(args.timesteps_per_forward, args.num_steps)},
        "advantage": {"normalization": normalization},
        "reward": spec["reward"],
        "eval": {"seeds": list(range(args.eval_seeds))},
        "run": {"num_epochs": args.epochs, "output_dir": folder, "name": f"{task}-{method}-{lr:g}-{normalization}-{kl:g}-{seed}",
                "seed": seed, "checkpoint_every": 10**6},
    })  # fmt: skip
    trainer = Trainer(config, progress=False)
    start = time.perf_counter()
    metrics = trainer.train()
    return {
        "queries": [m["epoch"] * samples for m in metrics],
        "reward": [m["eval_reward_mean"] for m in metrics],
        "kl": [m.get("kl", 0.0) for m in metrics[1:]],
        "context": context_change(trainer, spec["targeted"], metrics[-1]["epoch"]),
        "seconds": time.perf_counter() - start,
    }


def summary(runs: list[dict]) -> tuple[float, float, float]:
    """(mean, std) over seeds of the final improvement, and the mean context change."""
    finals = np.array([r["reward"][-1] - r["reward"][0] for r in runs])
    return finals.mean(), finals.std(), float(np.mean([r["context"] for r in runs]))


def cell(runs: list[dict]) -> str:
    mean, std, context = summary(runs)
    return f"{mean:+.4f} ± {std:.4f} ({context:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["blue", "hair"], choices=["blue", "hair"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--kl", type=float, default=0.1, help="the kl_coef > 0 of stage 3")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8, help="images per epoch (= reward queries per epoch)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--noise-level", type=float, default=0.7)
    parser.add_argument("--guidance-scale", type=float, default=4.5)
    parser.add_argument("--eval-seeds", type=int, default=8)
    parser.add_argument("--timesteps-per-forward", type=int, default=5, help="train.timesteps_per_forward (speed only)")
    parser.add_argument("--model", default="pxpo-tiny-flow")
    parser.add_argument("--out", default="docs/benchmarks", help="folder for flow_sample_efficiency*.md, .json and .png")
    args = parser.parse_args()

    out = Path(args.out)
    command = f"`python benchmarks/flow_sample_efficiency.py {' '.join(os.sys.argv[1:])}`"
    with tempfile.TemporaryDirectory() as folder:
        for task in args.tasks:
            start = time.perf_counter()
            runs: dict[tuple, list[dict]] = {}

            def measure(method, lr, normalization, kl):
                key = (method, lr, normalization, kl)
                if key not in runs:
                    runs[key] = [run_once(task, method, lr, normalization, kl, s, args, folder) for s in range(args.seeds)]
                    print(task, key, cell(runs[key]), flush=True)
                return runs[key]

            best = {}
            for method in METHODS:
                for lr in args.lrs:
                    measure(method, lr, "group", 0.0)
                best[method] = max(args.lrs, key=lambda lr: summary(runs[(method, lr, "group", 0.0)])[0])
                for normalization in ("batch", "group_location"):
                    measure(method, best[method], normalization, 0.0)
                measure(method, best[method], "group", args.kl)
            raw = [{"method": k[0], "lr": k[1], "normalization": k[2], "kl_coef": k[3], "seed": i, **r}
                   for k, rs in runs.items() for i, r in enumerate(rs)]  # fmt: skip
            atomic_write_text(out / f"flow_sample_efficiency_{task}.json", json.dumps(raw, indent=1) + "\n")
            lines = report(task, runs, best, args, out)
            minutes = (time.perf_counter() - start) / 60
            lines += [f"Command: {command}; model `{args.model}`, {args.num_steps} SDE steps (noise level {args.noise_level}), "
                      f"{args.samples} images per epoch in groups of {args.group_size}, {args.epochs} epochs, {args.seeds} seeds, "
                      f"{minutes:.1f} minutes on this machine.", ""]  # fmt: skip
            atomic_write_text(out / f"flow_sample_efficiency_{task}.md", "\n".join(lines))
            print("\n".join(lines), flush=True)
    sections = [(out / f"flow_sample_efficiency_{t}.md").read_text() for t in ("blue", "hair") if (out / f"flow_sample_efficiency_{t}.md").exists()]
    header = ["# Flow-matching model: PXPO against scalar GRPO", "",
              "pxpo-tiny-flow (SD3 class), equal reward queries; final improvement of the evaluation reward (mean ± std over seeds)",
              "with the context change in brackets (mean |pixel change| 0-255 on untargeted pixels).", ""]  # fmt: skip
    atomic_write_text(out / "flow_sample_efficiency.md", "\n".join(header) + "\n" + "\n".join(sections))


def report(task: str, runs: dict, best: dict, args, out: Path) -> list[str]:
    lines = [f"## {task}", "", "Stage 1, learning rates (normalisation \"group\", no KL):", "",
             "| method | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |", "|" + " --- |" * (len(args.lrs) + 1)]
    for m, name in METHODS.items():
        lines.append(f"| {name} | " + " | ".join(cell(runs[(m, lr, 'group', 0.0)]) for lr in args.lrs) + " |")
    lines += ["", f"Stages 2 and 3, each method at its best learning rate (PXPO {best['pxpo']:g}, scalar GRPO {best['ddpo']:g}):", "",
              f"| method | batch | group | group_location | group + kl_coef {args.kl:g} |", "| --- | --- | --- | --- | --- |"]
    for m, name in METHODS.items():
        lr = best[m]
        lines.append(f"| {name} | {cell(runs[(m, lr, 'batch', 0.0)])} | {cell(runs[(m, lr, 'group', 0.0)])} | "
                     f"{cell(runs[(m, lr, 'group_location', 0.0)])} | {cell(runs[(m, lr, 'group', args.kl)])} |")  # fmt: skip
    kls = {m: np.mean([np.mean(r["kl"]) for r in runs[(m, best[m], "group", args.kl)]]) for m in METHODS}
    lines += ["", f"Mean logged KL to the reference with kl_coef {args.kl:g}: "
              + ", ".join(f"{METHODS[m]} {kls[m]:.3g}" for m in METHODS) + ".", ""]

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for m, name in METHODS.items():
        for normalization, style in (("batch", ":"), ("group", "-"), ("group_location", "--")):
            rs = runs[(m, best[m], normalization, 0.0)]
            curves = np.array([np.array(r["reward"]) - r["reward"][0] for r in rs])
            ax.plot(rs[0]["queries"], curves.mean(axis=0), style, color="C0" if m == "pxpo" else "C1", label=f"{name}, {normalization}")
    ax.set_xlabel("reward queries (images scored)")
    ax.set_ylabel("evaluation reward - start")
    ax.set_title(f"{task} on pxpo-tiny-flow (mean over {args.seeds} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out / f"flow_sample_efficiency_{task}.png")
    return lines + [f"![{task}](flow_sample_efficiency_{task}.png)", ""]


if __name__ == "__main__":
    main()
