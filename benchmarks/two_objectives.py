"""The paper's Fig. 1 with a simulated annotator: one image, two opposite objectives.

Runs configs/human_sim_more_trees.toml (trees +2, water -2) and configs/human_sim_more_lake.toml
(the reverse) from the same seed. After every step it measures, with the bundled segmenter, the tree
and water fractions of the image shown (one draw of the step noise, what a person sees) and their
mean over --draws other step-noise draws from the same x_T (what the policy now makes of the image).
Writes DOCS/human_feedback_results.md, DOCS/images/two_objectives.png (curves) and
DOCS/images/two_objectives_images.png (the images).

    python benchmarks/two_objectives.py [--set sample.single_image_seed=3] [--draws 8] [--out docs]
"""

from __future__ import annotations

import _common as bench

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from measures import mean_class_fractions, read_image, single_image_draws
from pxpo.io import save_image
from pxpo.trainer import Trainer

RUNS = {"more_trees": "trees +, water -", "more_lake": "water +, trees -"}
CLASSES = ["tree", "water"]


def run(name: str, overrides: list[str], folder: str, draws: int) -> dict:
    """Train one run step by step; per step: fractions of the shown image and mean fractions over draws."""
    shown = {c: [] for c in CLASSES}
    expected = {c: [] for c in CLASSES}
    seconds = []

    def measure(trainer: Trainer, record: dict) -> None:  # an epoch-end callback
        epoch = record["epoch"]
        if epoch > 0:
            seconds.append(sum(record[k] for k in ("sample_seconds", "reward_seconds", "train_seconds", "eval_seconds")))
        path = trainer.run.eval_image_path(epoch, trainer.config.sample.single_image_seed)
        image = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].float() / 255
        for store, images in ((shown, image), (expected, single_image_draws(trainer, draws))):
            for c, value in mean_class_fractions(images, CLASSES).items():
                store[c].append(value)

    trainer = bench.build_trainer(f"configs/human_sim_{name}.toml", overrides, folder=folder, name=name + time.strftime("-%H%M%S"), callbacks=[measure])
    trainer.train()
    print(name, {k: [round(v, 3) for v in vs] for k, vs in expected.items()}, flush=True)
    sample = trainer.config.sample
    return {"shown": shown, "expected": expected, "seconds": float(np.median(seconds)), "run": trainer.run,
            "seed": sample.single_image_seed, "prompt": sample.prompts[0]}  # fmt: skip


def main() -> None:
    parser = bench.arguments(__doc__, overrides=True, out="docs", out_flags=("--out", "--docs"),
                             out_help="folder for human_feedback_results.md and images/")  # fmt: skip
    parser.add_argument("--draws", type=int, default=8, help="step-noise draws averaged per measurement")
    parser.add_argument("--output-dir", default="runs/two_objectives", help="where the run folders go (kept)")
    args = bench.parse(parser)

    results = {name: run(name, args.overrides, args.output_dir, args.draws) for name in RUNS}
    steps = len(results["more_trees"]["expected"]["tree"]) - 1
    seed, prompt = results["more_trees"]["seed"], results["more_trees"]["prompt"]
    docs = Path(args.out)

    with bench.figure(docs / "images" / "two_objectives.png", size=(9, 3.4), ncols=2) as axes:
        for ax, cls in zip(axes, CLASSES):
            for (name, label), colour in zip(RUNS.items(), ("tab:green", "tab:blue")):
                ax.plot(range(steps + 1), results[name]["expected"][cls], marker="o", color=colour, label=f"{label} (mean of {args.draws} draws)")
                ax.plot(range(steps + 1), results[name]["shown"][cls], ls=":", color=colour, alpha=0.6, label=f"{label} (image shown)")
            bench.label(ax, x="step (one reward query each)", y="", title=f"{cls} fraction of the image", legend_size=7)

    picked = sorted(set(np.linspace(0, steps, 6).round().astype(int).tolist()))
    rows = [np.concatenate([np.asarray(Image.open(results[n]["run"].eval_image_path(s, seed))) for s in picked], axis=1) for n in RUNS]
    strip = Image.fromarray(np.concatenate(rows, axis=0))
    save_image(strip.resize((strip.width * 3, strip.height * 3), Image.NEAREST), docs / "images" / "two_objectives_images.png")

    lines = ["# Two objectives on one image (simulated annotator)", "",
             f"\"{prompt}\", seed {seed}, {steps} steps of one reward query each. Tree and water "
             "fractions as the bundled segmenter sees them, after each step: *mean* over "
             f"{args.draws} step-noise draws from the image's x_T (what the policy makes of the image), and *shown*, the "
             "one image a person would see and paint. Median seconds per step (sample, reward, train, next image): "
             + ", ".join(f"{n} {r['seconds']:.1f}" for n, r in results.items()) + ".", ""]  # fmt: skip
    lines += bench.table(["step", *(f"{RUNS[n]}: {c} mean (shown)" for n in RUNS for c in CLASSES)],
                         [[s, *(f"{results[n]['expected'][c][s]:.3f} ({results[n]['shown'][c][s]:.3f})" for n in RUNS for c in CLASSES)]
                          for s in range(steps + 1)])  # fmt: skip
    lines += ["", "![fractions](images/two_objectives.png)", "",
              f"Images shown at steps {', '.join(map(str, picked))}: top row {RUNS['more_trees']}, bottom row {RUNS['more_lake']}.", "",
              "![images](images/two_objectives_images.png)"]  # fmt: skip
    bench.write_markdown(docs / "human_feedback_results.md", lines)


if __name__ == "__main__":
    main()
