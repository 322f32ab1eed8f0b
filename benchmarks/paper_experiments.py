"""Run the paper's experiments 1 and 2 on the bundled world and compare with the paper's numbers.

Trains configs/blue_penalty.toml and configs/hair_removal.toml (pxpo-tiny, SD class) and
configs/flow_blue_penalty.toml and configs/flow_hair_removal.toml (pxpo-tiny-flow, SD3 class), then
writes DOCS/experiments.md (evaluation reward, mean +- std over the fixed seeds, before and after;
each experiment's measurement is kept in DOCS/experiments.json, so experiments can run in separate
processes) and copies each run's reward curve and evolution grid to DOCS/images/.

    python benchmarks/paper_experiments.py [--only blue_penalty flow_blue_penalty] [--out docs]
"""

from __future__ import annotations

import _common as bench

import shutil
import time
from pathlib import Path

# name -> (title, the paper's numbers): what is compared, not measured here
EXPERIMENTS = {
    "blue_penalty": ("1. colour feedback: -blue, \"red taxi in traffic\"", "-0.39 ± 0.08 → -0.35 ± 0.08 (SD v1.4, 64 samples)"),
    "hair_removal": ("2. AI feedback: -hair confidence, \"portrait of a man on the beach\"", "-0.06 ± 0.04 → -0.02 ± 0.02 (SD v1.4, 10 images, 16 epochs)"),
    "flow_blue_penalty": ("1. on the flow-matching pxpo-tiny-flow (SD3 class)", "-0.39 ± 0.08 → -0.35 ± 0.08 (SD v1.4; no flow model in the paper)"),
    "flow_hair_removal": ("2. on the flow-matching pxpo-tiny-flow (SD3 class)", "-0.06 ± 0.04 → -0.02 ± 0.02 (SD v1.4; no flow model in the paper)"),
}


def row(name: str, entry: dict | str) -> str:
    """The table row of one experiment's stored measurement (rows stored as text by earlier versions stay as they are)."""
    if isinstance(entry, str):
        return entry
    title, paper = EXPERIMENTS[name]
    before = bench.plus_minus(entry["first_mean"], entry["first_std"], digits=3)
    after = bench.plus_minus(entry["last_mean"], entry["last_std"], digits=3)
    return (f"| {title} | {before} → {after} ({entry['eval_seeds']} fixed seeds; {entry['queries']} reward queries, "
            f"{entry['seconds'] / 60:.1f} min on {entry['machine']}) | {paper} |")  # fmt: skip


def main() -> None:
    parser = bench.arguments(__doc__, overrides=True, out="docs", out_flags=("--out", "--docs"),
                             out_help="folder for experiments.md, experiments.json and images/")  # fmt: skip
    parser.add_argument("--only", choices=list(EXPERIMENTS), nargs="+", default=list(EXPERIMENTS))
    parser.add_argument("--output-dir", default="runs/paper", help="where the run folders go (kept)")
    args = bench.parse(parser)

    docs = Path(args.out)
    store = docs / "experiments.json"
    for name in args.only:
        start = time.perf_counter()
        trainer = bench.build_trainer(f"configs/{name}.toml", args.overrides, folder=args.output_dir, name=name + time.strftime("-%Y%m%d-%H%M%S"))
        metrics = trainer.train()
        for figure in ("reward_curve", "evolution"):
            (docs / "images").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(trainer.run.path / f"{figure}.png", docs / "images" / f"{name}_{figure}.png")
        cfg = trainer.config
        first, last = metrics[0], metrics[-1]
        measured = {"first_mean": first["eval_reward_mean"], "first_std": first["eval_reward_std"],
                    "last_mean": last["eval_reward_mean"], "last_std": last["eval_reward_std"], "eval_seeds": len(cfg.eval.seeds),
                    "queries": cfg.sample.batch_size * cfg.sample.num_batches_per_epoch * cfg.run.num_epochs}  # fmt: skip
        rows = bench.store_json(store, name, measured, seconds=time.perf_counter() - start)
        print(row(name, rows[name]), flush=True)

    rows = bench.read_json(store)
    lines = ["# The paper's experiments on the bundled world", "",
             "Evaluation reward = mean pixel reward of the fixed evaluation seeds, mean ± std over images, before training and "
             "after the last epoch; each row's command is in experiments.json.", ""]  # fmt: skip
    lines += bench.table(["experiment", "pxpo on the bundled world", "the paper"], []) + [row(n, rows[n]) for n in EXPERIMENTS if n in rows]
    lines.append("")
    for name in [n for n in EXPERIMENTS if n in rows]:
        lines += [f"## {name}", "", f"![reward curve](images/{name}_reward_curve.png)", "", f"![evolution](images/{name}_evolution.png)", ""]
    bench.write_markdown(docs / "experiments.md", lines)


if __name__ == "__main__":
    main()
