"""How reliably does the simulated-annotator experiment move both classes the requested way?

For each run seed (run.seed: LoRA initialisation, step noise, shuffling) it trains both directions of
configs/human_sim_*.toml (trees +2 / water -2, and the reverse) from the same image and measures the
tree and water fractions before and after, as means over --draws step-noise draws from the image's x_T.
One invocation is one setting (its --set overrides); its rows are stored under that setting in
docs/benchmarks/two_objectives_seeds.json, and docs/benchmarks/two_objectives_seeds.md is rewritten
from every setting measured so far.

    python benchmarks/two_objectives_seeds.py --seeds 0 1 2 [--set train.learning_rate=3e-3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from pxpo.config import load_config  # noqa: E402
from pxpo.io import atomic_write_text  # noqa: E402
from pxpo.rewards.human import mean_class_fractions  # noqa: E402
from pxpo.trainer import Trainer  # noqa: E402

# run -> the direction each class is asked to move (+1 more, -1 less)
RUNS = {"more_trees": {"tree": 1, "water": -1}, "more_lake": {"tree": -1, "water": 1}}
CLASSES = ["tree", "water"]


def measure_seed(seed: int, overrides: list[str], draws: int, folder: str) -> dict:
    """Both runs from one run seed: {"start": fractions, run: fractions after training}."""
    row = {"seed": seed}
    for name in RUNS:
        config = load_config(f"configs/human_sim_{name}.toml",
                             [*overrides, f"run.seed={seed}", f"run.output_dir={folder!r}", f"run.name='{name}-{seed}'"])
        trainer = Trainer(config, progress=False)
        if "start" not in row:  # the same for both runs: same image, same draws
            row["start"] = mean_class_fractions(trainer.single_image_draws(draws), CLASSES)
        trainer.train()
        row[name] = mean_class_fractions(trainer.single_image_draws(draws), CLASSES)
    return row


def held(row: dict) -> dict[str, bool]:
    """For each run and class: did the class move the way that run asked?"""
    return {f"{run}:{c}": (row[run][c] - row["start"][c]) * sign > 0 for run, signs in RUNS.items() for c, sign in signs.items()}


def report(results: dict[str, list[dict]]) -> str:
    lines = ["# Simulated annotator: how often each class moves the requested way", "",
             "Both runs of configs/human_sim_*.toml per run seed; fractions are means over step-noise draws of the",
             "image, before -> after. A check mark: the class moved the way that run asked.", ""]
    for setting, entry in results.items():
        rows = entry["rows"]
        counts = np.sum([list(held(r).values()) for r in rows], axis=0)
        lines += [f"## {setting}", "", f"`{entry['command']}`, {entry['minutes']:.1f} minutes on this machine.", "",
                  "| run seed | trees+ run: tree | trees+ run: water | water+ run: tree | water+ run: water |",
                  "| --- | --- | --- | --- | --- |"]
        for r in rows:
            marks = held(r)
            cells = [f"{r['start'][c]:.3f} -> {r[run][c]:.3f} {'✓' if marks[f'{run}:{c}'] else '✗'}" for run in RUNS for c in CLASSES]
            lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
        lines += ["| held | " + " | ".join(f"{n} of {len(rows)}" for n in counts) + " |", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for both runs")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--out", default="docs/benchmarks")
    args = parser.parse_args()

    out = Path(args.out)
    setting = "configs as shipped" + "".join(f", {o}" for o in args.overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure_seed(s, args.overrides, args.draws, folder) for s in args.seeds]
    store = out / "two_objectives_seeds.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    command = " ".join(["python benchmarks/two_objectives_seeds.py --seeds", *map(str, args.seeds), *(f"--set {o}" for o in args.overrides)])
    results[setting] = {"command": command, "minutes": (time.perf_counter() - start) / 60, "rows": rows}
    atomic_write_text(store, json.dumps(results, indent=1) + "\n")
    text = report(results)
    atomic_write_text(out / "two_objectives_seeds.md", text)
    print(text)


if __name__ == "__main__":
    main()
