"""Run the paper's experiments 1 and 2 on the bundled world and compare with the paper's numbers.

Trains configs/blue_penalty.toml and configs/hair_removal.toml (pxpo-tiny, SD class) and
configs/flow_blue_penalty.toml and configs/flow_hair_removal.toml (pxpo-tiny-flow, SD3 class), then
writes docs/experiments.md (evaluation reward, mean +- std over the fixed seeds, before and after;
each experiment's row is kept in docs/experiments.json, so experiments can run in separate
processes) and copies each run's reward curve and evolution grid to docs/images/.

    python benchmarks/paper_experiments.py [--only blue_penalty flow_blue_penalty]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

from pxpo.config import load_config  # noqa: E402
from pxpo.io import atomic_write_text  # noqa: E402
from pxpo.trainer import Trainer  # noqa: E402

EXPERIMENTS = {
    "blue_penalty": ("1. colour feedback: -blue, \"red taxi in traffic\"", "-0.39 ± 0.08 → -0.35 ± 0.08 (SD v1.4, 64 samples)"),
    "hair_removal": ("2. AI feedback: -hair confidence, \"portrait of a man on the beach\"", "-0.06 ± 0.04 → -0.02 ± 0.02 (SD v1.4, 10 images, 16 epochs)"),
    "flow_blue_penalty": ("1. on the flow-matching pxpo-tiny-flow (SD3 class)", "-0.39 ± 0.08 → -0.35 ± 0.08 (SD v1.4; no flow model in the paper)"),
    "flow_hair_removal": ("2. on the flow-matching pxpo-tiny-flow (SD3 class)", "-0.06 ± 0.04 → -0.02 ± 0.02 (SD v1.4; no flow model in the paper)"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=list(EXPERIMENTS), nargs="+", default=list(EXPERIMENTS))
    parser.add_argument("--output-dir", default="runs/paper")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args()

    docs = Path(args.docs)
    store = docs / "experiments.json"
    rows = json.loads(store.read_text()) if store.exists() else {}
    for name in args.only:
        config = load_config(f"configs/{name}.toml", [f"run.output_dir={args.output_dir!r}", f"run.name={name + time.strftime('-%Y%m%d-%H%M%S')!r}"])
        start = time.perf_counter()
        trainer = Trainer(config, progress=False)
        metrics = trainer.train()
        minutes = (time.perf_counter() - start) / 60
        first, last = metrics[0], metrics[-1]
        for figure in ("reward_curve", "evolution"):
            shutil.copyfile(trainer.run.path / f"{figure}.png", docs / "images" / f"{name}_{figure}.png")
        title, paper = EXPERIMENTS[name]
        queries = config.sample.batch_size * config.sample.num_batches_per_epoch * config.run.num_epochs
        rows[name] = (
            f"| {title} | {first['eval_reward_mean']:.3f} ± {first['eval_reward_std']:.3f} → "
            f"{last['eval_reward_mean']:.3f} ± {last['eval_reward_std']:.3f} ({len(config.eval.seeds)} fixed seeds; "
            f"{queries} reward queries, {minutes:.1f} min) | {paper} |"
        )
        print(rows[name], flush=True)
        atomic_write_text(store, json.dumps(rows, indent=1) + "\n")

    lines = [
        "# The paper's experiments on the bundled world",
        "",
        "`python benchmarks/paper_experiments.py` on this machine's 2 CPU cores; evaluation reward = mean pixel reward",
        "of the fixed evaluation seeds, mean ± std over images, before training and after the last epoch.",
        "",
        "| experiment | pxpo on the bundled world | the paper |",
        "| --- | --- | --- |",
        *[rows[name] for name in EXPERIMENTS if name in rows],
        "",
    ]
    for name in [n for n in EXPERIMENTS if n in rows]:
        lines += [f"## {name}", "", f"![reward curve](images/{name}_reward_curve.png)", "", f"![evolution](images/{name}_evolution.png)", ""]
    atomic_write_text(docs / "experiments.md", "\n".join(lines))


if __name__ == "__main__":
    main()
