"""The paper's Fig. 1 with a simulated annotator: one image, two opposite objectives.

Runs configs/human_sim_more_trees.toml (trees +2, water -2) and configs/human_sim_more_lake.toml
(the reverse) from the same seed. After every step it measures, with the bundled segmenter, the tree
and water fractions of the image shown (one draw of the step noise, what a person sees) and their
mean over --draws other step-noise draws from the same x_T (what the policy now makes of the image).
Writes docs/human_feedback_results.md, docs/images/two_objectives.png (curves) and
docs/images/two_objectives_images.png (the images).

    python benchmarks/two_objectives.py [--set sample.single_image_seed=3] [--draws 8]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pxpo.config import load_config  # noqa: E402
from pxpo.io import atomic_write_text, save_image  # noqa: E402
from pxpo.plots import save_figure  # noqa: E402
from pxpo.rewards.human import mean_class_fractions  # noqa: E402
from pxpo.trainer import Trainer  # noqa: E402

RUNS = {"more_trees": "trees +, water -", "more_lake": "water +, trees -"}
CLASSES = ["tree", "water"]


def run(name: str, overrides: list[str], draws: int) -> dict:
    """Train one run step by step; per step: fractions of the shown image and mean fractions over draws."""
    config = load_config(f"configs/human_sim_{name}.toml", overrides + [f"run.name={name + time.strftime('-%H%M%S')!r}"])
    seed = config.sample.single_image_seed
    shown = {c: [] for c in CLASSES}
    expected = {c: [] for c in CLASSES}
    seconds = []

    def measure(trainer: Trainer, record: dict) -> None:  # an epoch-end callback
        epoch = record["epoch"]
        if epoch > 0:
            seconds.append(sum(record[k] for k in ("sample_seconds", "reward_seconds", "train_seconds", "eval_seconds")))
        image = torch.from_numpy(np.array(Image.open(trainer.run.eval_image_path(epoch, seed)))).permute(2, 0, 1)[None].float() / 255
        for store, images in ((shown, image), (expected, trainer.single_image_draws(draws))):
            for c, value in mean_class_fractions(images, CLASSES).items():
                store[c].append(value)

    trainer = Trainer(config, progress=False, callbacks=[measure])
    trainer.train()
    print(name, {k: [round(v, 3) for v in vs] for k, vs in expected.items()}, flush=True)
    return {"shown": shown, "expected": expected, "seconds": float(np.median(seconds)), "dir": trainer.run.path, "seed": seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for both runs")
    parser.add_argument("--draws", type=int, default=8, help="step-noise draws averaged per measurement")
    parser.add_argument("--output-dir", default="runs/two_objectives")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args()

    overrides = [*args.overrides, f"run.output_dir={args.output_dir!r}"]
    results = {name: run(name, overrides, args.draws) for name in RUNS}
    steps = len(results["more_trees"]["expected"]["tree"]) - 1
    seed = results["more_trees"]["seed"]
    docs = Path(args.docs)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, cls in zip(axes, CLASSES):
        for (name, label), colour in zip(RUNS.items(), ("tab:green", "tab:blue")):
            ax.plot(range(steps + 1), results[name]["expected"][cls], marker="o", color=colour, label=f"{label} (mean of {args.draws} draws)")
            ax.plot(range(steps + 1), results[name]["shown"][cls], ls=":", color=colour, alpha=0.6, label=f"{label} (image shown)")
        ax.set_title(f"{cls} fraction of the image")
        ax.set_xlabel("step (one reward query each)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, docs / "images" / "two_objectives.png")

    picked = sorted(set(np.linspace(0, steps, 6).round().astype(int).tolist()))
    rows = [np.concatenate([np.asarray(Image.open(results[n]["dir"] / "eval" / f"epoch_{s:04d}" / f"seed_{seed:04d}.png")) for s in picked], axis=1)
            for n in RUNS]  # fmt: skip
    strip = Image.fromarray(np.concatenate(rows, axis=0))
    save_image(strip.resize((strip.width * 3, strip.height * 3), Image.NEAREST), docs / "images" / "two_objectives_images.png")

    command = " ".join(["python benchmarks/two_objectives.py", *(f"--set {o}" for o in args.overrides), f"--draws {args.draws}"])
    lines = ["# Two objectives on one image (simulated annotator)", "",
             f"`{command}`: \"nature landscape\", seed {seed}, {steps} steps of one reward query each. Tree and water "
             "fractions as the bundled segmenter sees them, after each step: *mean* over "
             f"{args.draws} step-noise draws from the image's x_T (what the policy makes of the image), and *shown*, the "
             "one image a person would see and paint. Median seconds per step (sample, reward, train, next image): "
             + ", ".join(f"{n} {r['seconds']:.1f}" for n, r in results.items()) + ".", "",
             "| step | " + " | ".join(f"{RUNS[n]}: {c} mean (shown)" for n in RUNS for c in CLASSES) + " |",
             "|" + " --- |" * (1 + 2 * len(RUNS))]
    for s in range(steps + 1):
        cells = [f"{results[n]['expected'][c][s]:.3f} ({results[n]['shown'][c][s]:.3f})" for n in RUNS for c in CLASSES]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "![fractions](images/two_objectives.png)", "",
              f"Images shown at steps {', '.join(map(str, picked))}: top row {RUNS['more_trees']}, bottom row {RUNS['more_lake']}.", "",
              "![images](images/two_objectives_images.png)", ""]
    atomic_write_text(docs / "human_feedback_results.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
