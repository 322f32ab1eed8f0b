"""Is PXPO more sample-efficient than DDPO? Both methods, the same tasks, the same budget of reward queries.

Tasks on the bundled world:
  blue   - blue penalty, "red taxi in traffic", 8 images per epoch
  hair   - minus the segmenter's hair confidence, "portrait of a man on the beach", 8 images per epoch
  two    - one "nature landscape" image, a simulated person paints trees +2 and water -2, 1 image per epoch
           (the seed picks the image; DDPO sees the map's mean as its reward)

Each method runs every learning rate of the same sweep with several seeds and is reported at its best
learning rate (highest mean final improvement). Reported per task: evaluation reward against reward
queries (mean +- std over seeds), improvement at fixed budgets, the queries PXPO needs to reach DDPO's
final improvement, and context preservation: the mean absolute pixel change (0-255) between the first
and last evaluation images on pixels whose class (segmenter, first image) is not targeted by the task.

    python benchmarks/sample_efficiency.py                       # the full benchmark (long)
    python benchmarks/sample_efficiency.py --tasks blue --seeds 3 --lrs 3e-3 1e-2 --epochs 6
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
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pxpo.config import validate_config  # noqa: E402
from pxpo.io import atomic_write_text  # noqa: E402
from pxpo.plots import save_figure  # noqa: E402
from pxpo.models import load_segmenter  # noqa: E402
from pxpo.rewards.segmentation import class_probabilities  # noqa: E402
from pxpo.trainer import Trainer  # noqa: E402

TASKS = {
    "blue": {
        "sample": {"prompts": ["red taxi in traffic"], "batch_size": 8},
        "train": {"batch_size": 8},
        "reward": {"name": "blue_penalty"},
        "eval": {"seeds": list(range(8))},
        "targeted": [],  # every pixel is rewarded: the context is the whole image
    },
    "hair": {
        "sample": {"prompts": ["portrait of a man on the beach"], "batch_size": 8},
        "train": {"batch_size": 8},
        "reward": {"name": "segmentation", "kwargs": {"classes": {"hair": -1.0}}},
        "eval": {"seeds": list(range(8))},
        "targeted": ["hair", "hat"],
    },
    "two": {
        "sample": {"prompts": ["nature landscape"], "batch_size": 1, "single_image_seed": 0, "single_image_noise": "fresh", "eta": 0.3},  # as configs/human_sim_*
        "train": {"batch_size": 1, "num_inner_epochs": 2},
        "advantage": {"normalization": "none"},
        "reward": {"name": "simulated_annotator", "kwargs": {"increase": ["tree"], "decrease": ["water"]}},
        "eval": {},
        "targeted": ["tree", "water"],
    },
}


def run_once(task: str, method: str, lr: float, seed: int, args: argparse.Namespace, folder: str) -> dict:
    spec = TASKS[task]
    data = {
        "model": {"pretrained": args.model},
        "sample": {**spec["sample"], "num_steps": args.num_steps},
        "train": {**spec["train"], "algorithm": method, "learning_rate": lr,
                  "timesteps_per_forward": min(args.timesteps_per_forward, args.num_steps)},
        "advantage": spec.get("advantage", {"normalization": "batch"}),
        "reward": spec["reward"],
        "eval": spec["eval"],
        "run": {"num_epochs": args.epochs[task] if isinstance(args.epochs, dict) else args.epochs, "output_dir": folder,
                "name": f"{task}-{method}-{lr:g}-{seed}", "seed": seed, "checkpoint_every": 10**6},
    }
    if task == "two":
        data["sample"]["single_image_seed"] = seed  # each seed is another image
    if args.samples:
        data["sample"]["batch_size"] = data["train"]["batch_size"] = min(args.samples, data["sample"]["batch_size"])
        if "seeds" in data["eval"]:
            data["eval"]["seeds"] = data["eval"]["seeds"][: args.samples]
    config = validate_config(data)
    trainer = Trainer(config, progress=False)
    metrics = trainer.train()
    per_epoch = config.sample.batch_size * config.sample.num_batches_per_epoch
    return {
        "queries": [m["epoch"] * per_epoch for m in metrics],
        "reward": [m["eval_reward_mean"] for m in metrics],
        "context": context_change(trainer, spec["targeted"], metrics[-1]["epoch"]),
    }


def context_change(trainer: Trainer, targeted: list[str], last_epoch: int) -> float:
    """Mean |pixel change| (0-255) between epoch 0 and the last epoch, on pixels of untargeted classes."""
    seeds = trainer.config.eval.seeds
    load = lambda e: np.stack([np.asarray(Image.open(trainer.run.eval_image_path(e, s))).astype(float) for s in seeds])  # noqa: E731
    first, last = load(0), load(last_epoch)
    mask = np.ones(first.shape[:3], dtype=bool)
    if targeted:
        model, processor = load_segmenter("pxpo-tiny-seg")
        images = torch.from_numpy(first).permute(0, 3, 1, 2).float() / 255
        labels = class_probabilities(model, processor, images).argmax(dim=1).numpy()
        ids = [int(k) for k, v in model.config.id2label.items() if v in targeted]
        mask = ~np.isin(labels, ids)
    return float(np.abs(last - first).mean(axis=-1)[mask].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: blue 8, hair 8, two 12)")
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=None, help="cap on images per epoch (smoke runs)")
    parser.add_argument("--timesteps-per-forward", type=int, default=5, help="train.timesteps_per_forward (speed only)")
    parser.add_argument("--model", default="pxpo-tiny")
    parser.add_argument("--out", default="docs/benchmarks", help="folder for sample_efficiency.md and the plots")
    args = parser.parse_args()
    args.epochs = args.epochs or {"blue": 8, "hair": 8, "two": 12}

    out = Path(args.out)
    command = f"`python benchmarks/sample_efficiency.py {' '.join(os.sys.argv[1:])}`"
    with tempfile.TemporaryDirectory() as folder:
        for task in args.tasks:
            start = time.perf_counter()
            runs = {(m, lr): [run_once(task, m, lr, s, args, folder) for s in range(args.seeds)] for m in ("pxpo", "ddpo") for lr in args.lrs}
            raw = [{"method": m, "lr": lr, "seed": i, **r} for (m, lr), rs in runs.items() for i, r in enumerate(rs)]
            atomic_write_text(out / f"sample_efficiency_{task}.json", json.dumps(raw, indent=1) + "\n")  # every run, to re-read
            lines = task_report(task, runs, args, out)
            lines += [f"Command: {command}; model `{args.model}`, {args.num_steps} DDIM steps, {args.seeds} seeds, "
                      f"{(time.perf_counter() - start) / 60:.1f} minutes on this machine.", ""]
            atomic_write_text(out / f"sample_efficiency_{task}.md", "\n".join(lines))
            print("\n".join(lines), flush=True)
    write_summary(out)


def write_summary(out: Path) -> None:
    """sample_efficiency.md: every task's section that has been measured (tasks can run in separate processes)."""
    sections = [(out / f"sample_efficiency_{t}.md").read_text() for t in TASKS if (out / f"sample_efficiency_{t}.md").exists()]
    header = ["# Sample efficiency: PXPO against DDPO", "",
              "Evaluation on fixed seeds, the same for every run; each method at its best learning rate of the sweep.", ""]
    atomic_write_text(out / "sample_efficiency.md", "\n".join(header) + "\n" + "\n".join(sections))


def task_report(task: str, runs: dict, args: argparse.Namespace, out: Path) -> list[str]:
    def improvement(rs):  # [seeds, budgets]
        return np.array([np.array(r["reward"]) - r["reward"][0] for r in rs])

    lines = [f"## {task}", "", "Learning-rate sweep: final improvement of the evaluation reward (mean ± std over seeds), and in",
             "brackets the context change (mean |pixel change|, 0-255, on untargeted pixels) it cost:", "",
             "| method | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |", "|" + " --- |" * (len(args.lrs) + 1)]
    best = {}
    for method in ("pxpo", "ddpo"):
        finals = {lr: improvement(runs[(method, lr)])[:, -1] for lr in args.lrs}
        contexts = {lr: np.mean([r["context"] for r in runs[(method, lr)]]) for lr in args.lrs}
        best[method] = max(args.lrs, key=lambda lr: finals[lr].mean())
        lines.append(f"| {method} | " + " | ".join(f"{finals[lr].mean():+.4f} ± {finals[lr].std():.4f} ({contexts[lr]:.1f})" for lr in args.lrs) + " |")
    queries = runs[("pxpo", best["pxpo"])][0]["queries"]
    curves = {m: improvement(runs[(m, best[m])]) for m in best}
    ddpo_final = curves["ddpo"][:, -1].mean()
    pxpo_mean = curves["pxpo"].mean(axis=0)
    reached = next((q for q, v in zip(queries, pxpo_mean) if ddpo_final > 0 and v >= ddpo_final), None)
    budgets = sorted(set([queries[len(queries) // 3], queries[2 * len(queries) // 3], queries[-1]]))
    lines += ["", f"At each method's best learning rate (PXPO {best['pxpo']:g}, DDPO {best['ddpo']:g}): improvement of the evaluation reward",
              "", "| reward queries | " + " | ".join(str(b) for b in budgets) + " | context change (0-255, untargeted pixels) |",
              "|" + " --- |" * (len(budgets) + 2)]
    for m in ("pxpo", "ddpo"):
        cells = [f"{curves[m][:, queries.index(b)].mean():+.4f} ± {curves[m][:, queries.index(b)].std():.4f}" for b in budgets]
        context = np.array([r["context"] for r in runs[(m, best[m])]])
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {context.mean():.2f} ± {context.std():.2f} |")
    lines += ["", "Queries PXPO needs to reach DDPO's final improvement: "
              + (f"{reached} of {queries[-1]}" if reached is not None else ("DDPO did not improve" if ddpo_final <= 0 else "not reached")), ""]

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for m in ("pxpo", "ddpo"):
        mean, std = curves[m].mean(axis=0), curves[m].std(axis=0)
        ax.plot(queries, mean, marker="o", label=f"{m.upper()} (lr {best[m]:g})")
        ax.fill_between(queries, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("reward queries (images scored)")
    ax.set_ylabel("evaluation reward - start")
    ax.set_title(task)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out / f"sample_efficiency_{task}.png")
    return lines + [f"![{task}](sample_efficiency_{task}.png)", ""]


if __name__ == "__main__":
    main()
