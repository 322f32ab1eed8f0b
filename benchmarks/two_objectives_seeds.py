"""How reliably does the simulated-annotator experiment move both classes the requested way?

For each run seed (run.seed: LoRA initialisation, step noise, shuffling) it trains both directions of
configs/human_sim_*.toml (trees +2 / water -2, and the reverse) from the same image and measures the
tree and water fractions before and after, as means over --draws step-noise draws from the image's x_T.
One invocation is one setting (its --set overrides); its rows are stored under that setting in
OUT/two_objectives_seeds.json, and OUT/two_objectives_seeds.md is rewritten from every setting measured so far.

    python benchmarks/two_objectives_seeds.py --seeds 0 1 2 [--set train.learning_rate=3e-3] [--out docs/benchmarks]
"""

from __future__ import annotations

import _common as bench

import tempfile
from pathlib import Path

import numpy as np

from measures import mean_class_fractions, single_image_draws

# run -> the direction each class is asked to move (+1 more, -1 less)
RUNS = {"more_trees": {"tree": 1, "water": -1}, "more_lake": {"tree": -1, "water": 1}}
CLASSES = ["tree", "water"]


def measure_seed(seed: int, overrides: list[str], draws: int, folder: str) -> dict:
    """Both runs from one run seed: {"start": fractions, run: fractions after training}."""
    row = {"seed": seed}
    for name in RUNS:
        trainer = bench.build_trainer(f"configs/human_sim_{name}.toml", [*overrides, f"run.seed={seed}"], folder=folder, name=f"{name}-{seed}")
        if "start" not in row:  # the same for both runs: same image, same draws
            row["start"] = mean_class_fractions(single_image_draws(trainer, draws), CLASSES)
        trainer.train()
        row[name] = mean_class_fractions(single_image_draws(trainer, draws), CLASSES)
    return row


def held(row: dict) -> dict[str, bool]:
    """For each run and class: did the class move the way that run asked?"""
    return {f"{run}:{c}": (row[run][c] - row["start"][c]) * sign > 0 for run, signs in RUNS.items() for c, sign in signs.items()}


def report(results: dict[str, dict]) -> list[str]:
    lines = ["# Simulated annotator: how often each class moves the requested way", "",
             "Both runs of configs/human_sim_*.toml per run seed; fractions are means over step-noise draws of the",
             "image, before -> after. A check mark: the class moved the way that run asked.", ""]  # fmt: skip
    for setting, entry in results.items():
        rows = entry["rows"]
        counts = np.sum([list(held(r).values()) for r in rows], axis=0)
        minutes = entry["seconds"] / 60 if "seconds" in entry else entry["minutes"]  # entries stored before the harness: minutes
        lines += [f"## {setting}", "", f"`{entry['command']}`, {minutes:.1f} minutes on {entry.get('machine', 'this machine')}.", ""]
        table = [[r["seed"], *(f"{r['start'][c]:.3f} -> {r[run][c]:.3f} {'✓' if held(r)[f'{run}:{c}'] else '✗'}" for run in RUNS for c in CLASSES)]
                 for r in rows]  # fmt: skip
        table.append(["held", *(f"{n} of {len(rows)}" for n in counts)])
        lines += bench.table(["run seed", "trees+ run: tree", "trees+ run: water", "water+ run: tree", "water+ run: water"], table) + [""]
    return lines


def main() -> None:
    parser = bench.arguments(__doc__, seeds=[0, 1, 2], overrides=True, out="docs/benchmarks",
                             out_help="folder of two_objectives_seeds.json (every setting measured) and .md")  # fmt: skip
    parser.add_argument("--draws", type=int, default=8, help="step-noise draws averaged per measurement")
    args = bench.parse(parser)

    out = Path(args.out)
    setting = "configs as shipped" + "".join(f", {o}" for o in args.overrides)
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure_seed(s, args.overrides, args.draws, folder) for s in args.seeds]
    results = bench.store_json(out / "two_objectives_seeds.json", setting, {"rows": rows})
    bench.write_markdown(out / "two_objectives_seeds.md", report(results))


if __name__ == "__main__":
    main()
