"""PXPO against scalar GRPO on the bundled flow-matching model (pxpo-tiny-flow), at equal reward queries.

Tasks (_common.TASKS, shared with sample_efficiency.py): blue (blue penalty, "red taxi in traffic") and hair
(minus the bundled segmenter's hair confidence, "portrait of a man on the beach"); 8 images per epoch in groups
of 4, Flow-GRPO's SDE (noise level 0.7), 10 steps. Scalar GRPO is the scalar loss (``train.algorithm =
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

import _common as bench

import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = {"pxpo": "PXPO", "ddpo": "scalar GRPO"}
TASKS = ("blue", "hair")


def run_once(task: str, method: str, lr: float, normalization: str, kl: float, seed: int, args, folder: str) -> dict:
    extra = {
        "sample": {"batch_size": args.samples, "group_size": args.group_size, "noise_level": args.noise_level, "guidance_scale": args.guidance_scale},
        "train": {"batch_size": args.samples, "kl_coef": kl},
        "advantage": {"normalization": normalization},
        "eval": {"seeds": list(range(args.eval_seeds))},
    }
    return bench.run_task(task, args, folder, method=method, lr=lr, seed=seed, epochs=args.epochs, extra=extra, tag=f"{normalization}-{kl:g}")


def main() -> None:
    parser = bench.sweep_arguments(__doc__, tasks=TASKS, model="pxpo-tiny-flow", epochs=8, prefix="flow_sample_efficiency")
    parser.add_argument("--kl", type=float, default=0.1, help="the kl_coef > 0 of stage 3")
    parser.add_argument("--samples", type=int, default=8, help="images per epoch (= reward queries per epoch)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--noise-level", type=float, default=0.7)
    parser.add_argument("--guidance-scale", type=float, default=4.5)
    parser.add_argument("--eval-seeds", type=int, default=8)
    args = bench.parse(parser)

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as folder:
        for task in args.tasks:
            start = time.perf_counter()
            runs: dict[tuple, list[dict]] = {}

            def measure(method, lr, normalization, kl):
                key = (method, lr, normalization, kl)
                if key not in runs:
                    runs[key] = [run_once(task, method, lr, normalization, kl, s, args, folder) for s in args.seeds]
                    print(task, key, bench.sweep_cell(runs[key]), flush=True)

            best = {}
            for method in METHODS:
                for lr in args.lrs:
                    measure(method, lr, "group", 0.0)
                best[method] = max(args.lrs, key=lambda lr: bench.final_improvement(runs[(method, lr, "group", 0.0)]))
                for normalization in ("batch", "group_location"):
                    measure(method, best[method], normalization, 0.0)
                measure(method, best[method], "group", args.kl)
            raw = [{"method": k[0], "lr": k[1], "normalization": k[2], "kl_coef": k[3], "seed": seed, **r}
                   for k, rs in runs.items() for seed, r in zip(args.seeds, rs)]  # fmt: skip
            lines = report(task, runs, best, args, out)
            lines += [f"Model `{args.model}`, {args.num_steps} SDE steps (noise level {args.noise_level}), {args.samples} images per epoch "
                      f"in groups of {args.group_size}, {args.epochs} epochs, seeds {', '.join(map(str, args.seeds))}."]  # fmt: skip
            bench.write_task(out, "flow_sample_efficiency", task, raw, lines, bench.elapsed(start))
    bench.collate(out / "flow_sample_efficiency.md",
                  ["# Flow-matching model: PXPO against scalar GRPO", "",
                   "pxpo-tiny-flow (SD3 class), equal reward queries; final improvement of the evaluation reward (mean ± std over seeds)",
                   "with the context change in brackets (mean |pixel change| 0-255 on untargeted pixels)."],
                  [out / f"flow_sample_efficiency_{t}.md" for t in TASKS])  # fmt: skip


def report(task: str, runs: dict, best: dict, args, out: Path) -> list[str]:
    lines = [f"## {task}", "", "Stage 1, learning rates (normalisation \"group\", no KL):", ""]
    lines += bench.table(["method", *(f"lr {lr:g}" for lr in args.lrs)],
                         [[name, *(bench.sweep_cell(runs[(m, lr, "group", 0.0)]) for lr in args.lrs)] for m, name in METHODS.items()])
    lines += ["", f"Stages 2 and 3, each method at its best learning rate (PXPO {best['pxpo']:g}, scalar GRPO {best['ddpo']:g}):", ""]
    settings = [("batch", 0.0), ("group", 0.0), ("group_location", 0.0), ("group", args.kl)]
    lines += bench.table(["method", "batch", "group", "group_location", f"group + kl_coef {args.kl:g}"],
                         [[name, *(bench.sweep_cell(runs[(m, best[m], n, kl)]) for n, kl in settings)] for m, name in METHODS.items()])
    kls = {m: np.mean([np.mean(r["kl"]) for r in runs[(m, best[m], "group", args.kl)]]) for m in METHODS}
    lines += ["", f"Mean logged KL to the reference with kl_coef {args.kl:g}: " + ", ".join(f"{METHODS[m]} {kls[m]:.3g}" for m in METHODS) + ".", ""]

    with bench.figure(out / f"flow_sample_efficiency_{task}.png") as ax:
        for m, name in METHODS.items():
            for normalization, style in (("batch", ":"), ("group", "-"), ("group_location", "--")):
                rs = runs[(m, best[m], normalization, 0.0)]
                ax.plot(rs[0]["queries"], bench.improvements(rs).mean(axis=0), style, color="C0" if m == "pxpo" else "C1", label=f"{name}, {normalization}")
        bench.label(ax, x="reward queries (images scored)", y="evaluation reward - start",
                    title=f"{task} on {args.model} (mean over {len(args.seeds)} seeds)", legend_size=7)  # fmt: skip
    return lines + [f"![{task}](flow_sample_efficiency_{task}.png)"]


if __name__ == "__main__":
    main()
