"""Is PXPO more sample-efficient than DDPO? Both methods, the same tasks, the same budget of reward queries.

Tasks on the bundled world (_common.TASKS):
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
    python benchmarks/sample_efficiency.py --tasks blue --seeds 0 1 2 --lrs 3e-3 1e-2 --epochs 6
"""

from __future__ import annotations

import _common as bench

import tempfile
import time
from pathlib import Path

METHODS = ("pxpo", "ddpo")
EPOCHS = {"blue": 8, "hair": 8, "two": 12}


def run_once(task: str, method: str, lr: float, seed: int, args, folder: str) -> dict:
    extra = {"sample": {"single_image_seed": seed}} if task == "two" else {}  # each seed is another image
    if args.samples:  # smaller epochs (smoke runs)
        config = bench.TASKS[task]["config"]
        batch = min(args.samples, config["sample"]["batch_size"])
        extra = bench.merge(extra, {"sample": {"batch_size": batch}, "train": {"batch_size": batch}})
        if "seeds" in config["eval"]:
            extra["eval"] = {"seeds": config["eval"]["seeds"][: args.samples]}
    return bench.run_task(task, args, folder, method=method, lr=lr, seed=seed, epochs=args.epochs or EPOCHS[task], extra=extra)


def main() -> None:
    parser = bench.sweep_arguments(__doc__, tasks=list(bench.TASKS), model="pxpo-tiny", epochs=None, prefix="sample_efficiency")
    parser.add_argument("--samples", type=int, default=None, help="cap on images per epoch (smoke runs)")
    args = bench.parse(parser)

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as folder:
        for task in args.tasks:
            start = time.perf_counter()
            runs = {(m, lr): [run_once(task, m, lr, s, args, folder) for s in args.seeds] for m in METHODS for lr in args.lrs}
            raw = [{"method": m, "lr": lr, "seed": seed, **r} for (m, lr), rs in runs.items() for seed, r in zip(args.seeds, rs)]
            lines = task_report(task, runs, args, out) + [f"Model `{args.model}`, {args.num_steps} DDIM steps, seeds {', '.join(map(str, args.seeds))}."]
            bench.write_task(out, "sample_efficiency", task, raw, lines, bench.elapsed(start))
    bench.collate(out / "sample_efficiency.md",
                  ["# Sample efficiency: PXPO against DDPO", "",
                   "Evaluation on fixed seeds, the same for every run; each method at its best learning rate of the sweep."],
                  [out / f"sample_efficiency_{t}.md" for t in bench.TASKS])  # fmt: skip


def task_report(task: str, runs: dict, args, out: Path) -> list[str]:
    lines = [f"## {task}", "", "Learning-rate sweep: final improvement of the evaluation reward (mean ± std over seeds), and in",
             "brackets the context change (mean |pixel change|, 0-255, on untargeted pixels) it cost:", ""]  # fmt: skip
    lines += bench.table(["method", *(f"lr {lr:g}" for lr in args.lrs)], [[m, *(bench.sweep_cell(runs[(m, lr)]) for lr in args.lrs)] for m in METHODS])
    best = {m: max(args.lrs, key=lambda lr: bench.final_improvement(runs[(m, lr)])) for m in METHODS}
    queries = runs[("pxpo", best["pxpo"])][0]["queries"]
    curves = {m: bench.improvements(runs[(m, best[m])]) for m in METHODS}
    ddpo_final = curves["ddpo"][:, -1].mean()
    reached = next((q for q, v in zip(queries, curves["pxpo"].mean(axis=0)) if ddpo_final > 0 and v >= ddpo_final), None)
    budgets = sorted({queries[len(queries) // 3], queries[2 * len(queries) // 3], queries[-1]})
    lines += ["", f"At each method's best learning rate (PXPO {best['pxpo']:g}, DDPO {best['ddpo']:g}): improvement of the evaluation reward", ""]
    lines += bench.table(["reward queries", *map(str, budgets), "context change (0-255, untargeted pixels)"],
                         [[m, *(bench.pm(curves[m][:, queries.index(b)], digits=4, signed=True) for b in budgets),
                           bench.pm([r["context"] for r in runs[(m, best[m])]], digits=2)] for m in METHODS])  # fmt: skip
    outcome = f"{reached} of {queries[-1]}" if reached is not None else ("DDPO did not improve" if ddpo_final <= 0 else "not reached")
    lines += ["", f"Queries PXPO needs to reach DDPO's final improvement: {outcome}", ""]

    with bench.figure(out / f"sample_efficiency_{task}.png", size=(5.5, 3.4)) as ax:
        for m in METHODS:
            mean, std = curves[m].mean(axis=0), curves[m].std(axis=0)
            ax.plot(queries, mean, marker="o", label=f"{m.upper()} (lr {best[m]:g})")
            ax.fill_between(queries, mean - std, mean + std, alpha=0.2)
        bench.label(ax, x="reward queries (images scored)", y="evaluation reward - start", title=task)
    return lines + [f"![{task}](sample_efficiency_{task}.png)"]


if __name__ == "__main__":
    main()
