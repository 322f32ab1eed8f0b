"""The paper's Fig. 1 with a simulated annotator: one image, two opposite objectives.

Runs configs/human_sim_more_trees.toml (trees +2, water -2) and configs/human_sim_more_lake.toml
(the reverse) from the same seed, then measures the tree and water fractions of the image after
every step with the bundled segmenter. Writes docs/human_feedback_results.md and
docs/images/two_objectives.png (curves) and docs/images/two_objectives_images.png (the images).

    python benchmarks/two_objectives.py [--set sample.single_image_seed=3]
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
from pxpo.io import atomic_file, atomic_write_text  # noqa: E402
from pxpo.rewards.human import class_fractions  # noqa: E402
from pxpo.trainer import Trainer  # noqa: E402

RUNS = {"more_trees": "trees +, water -", "more_lake": "water +, trees -"}


def fractions_per_step(run_dir: Path, seed: int, steps: int) -> dict[str, list[float]]:
    images = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(run_dir / "eval" / f"epoch_{s:04d}" / f"seed_{seed:04d}.png"))).permute(2, 0, 1).float() / 255 for s in range(steps + 1)]
    )
    return class_fractions(images, ["tree", "water"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for both runs")
    parser.add_argument("--output-dir", default="runs/two_objectives")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args()

    results, run_dirs, seconds = {}, {}, {}
    for name in RUNS:
        config = load_config(f"configs/human_sim_{name}.toml", [*args.overrides, f"run.output_dir={args.output_dir!r}", f"run.name={name + time.strftime('-%H%M%S')!r}"])
        start = time.perf_counter()
        trainer = Trainer(config, progress=False)
        trainer.train()
        seconds[name] = (time.perf_counter() - start) / config.run.num_epochs
        run_dirs[name] = trainer.run.path
        results[name] = fractions_per_step(trainer.run.path, config.sample.single_image_seed, config.run.num_epochs)
        print(name, {k: [round(v, 3) for v in vs] for k, vs in results[name].items()}, flush=True)

    steps = len(next(iter(results.values()))["tree"]) - 1
    seed = config.sample.single_image_seed
    docs = Path(args.docs)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, cls in zip(axes, ["tree", "water"]):
        for name, label in RUNS.items():
            ax.plot(range(steps + 1), results[name][cls], marker="o", label=label)
        ax.set_title(f"{cls} fraction of the image")
        ax.set_xlabel("step (one reward query each)")
        ax.grid(alpha=0.3)
        ax.legend()
    with atomic_file(docs / "images" / "two_objectives.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    shown = sorted(set(np.linspace(0, steps, 6).round().astype(int).tolist()))
    rows = [np.concatenate([np.asarray(Image.open(run_dirs[n] / "eval" / f"epoch_{s:04d}" / f"seed_{seed:04d}.png")) for s in shown], axis=1) for n in RUNS]
    strip = Image.fromarray(np.concatenate(rows, axis=0))
    with atomic_file(docs / "images" / "two_objectives_images.png") as tmp:
        strip.resize((strip.width * 3, strip.height * 3), Image.NEAREST).save(tmp, format="PNG")

    lines = ["# Two objectives on one image (simulated annotator)", "",
             f"`python benchmarks/two_objectives.py`: \"nature landscape\", seed {seed}, {steps} steps of one reward query each; "
             "tree and water fractions of the image after each step, as the bundled segmenter sees them. "
             f"Seconds per step: " + ", ".join(f"{n} {s:.1f}" for n, s in seconds.items()) + ".", "",
             "| step | " + " | ".join(f"{RUNS[n]}: tree | {RUNS[n]}: water" for n in RUNS) + " |",
             "|" + " --- |" * (1 + 2 * len(RUNS))]
    for s in range(steps + 1):
        lines.append(f"| {s} | " + " | ".join(f"{results[n]['tree'][s]:.3f} | {results[n]['water'][s]:.3f}" for n in RUNS) + " |")
    lines += ["", "![fractions](images/two_objectives.png)", "",
              f"Images at steps {', '.join(map(str, shown))}: top row {RUNS['more_trees']}, bottom row {RUNS['more_lake']}.", "",
              "![images](images/two_objectives_images.png)", ""]
    atomic_write_text(docs / "human_feedback_results.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
