"""What a painted step changes: the painted region against the unpainted one, in the app's sessions.

For each seed, a session of the app (``pxpo.app.sessions.session_config``: single-image mode, 20 DDIM
steps at eta 0.3, lr 1e-2, 2 inner epochs) is trained by the simulated annotator (+2 on trees, -2 on
water, as the bundled segmenter sees them) for --steps painted steps, then one step with an all-zero map.
After every step the image a person would now see is compared with the one the map was painted on: the
mean absolute pixel change (RGB in [0, 1]) inside the painted pixels and outside them.

Both ways of drawing the denoising steps' noise are run side by side: "fixed" (the app's: the same noise
every step, so the image is a function of the weights) and "fresh" (a new draw each step, as sessions did
before). Writes docs/benchmarks/painted_step_change.{md,json,png}.

    python benchmarks/painted_step_change.py [--seeds 0 1 2 3 4] [--steps 4] [--model pxpo-tiny] [--learning-rate 1e-2]
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

from pxpo.app.sessions import session_config  # noqa: E402
from pxpo.config import apply_overrides, validate_config  # noqa: E402
from pxpo.io import atomic_write_text  # noqa: E402
from pxpo.plots import save_figure  # noqa: E402
from pxpo.rewards.human import simulated_annotator  # noqa: E402
from pxpo.trainer import Trainer  # noqa: E402

MODES = ("fixed", "fresh")  # --modes picks some


def shown(trainer: Trainer, step: int) -> np.ndarray:
    """The image a person sees after ``step`` steps (the PNG the app serves), [H, W, 3] in [0, 1]."""
    path = trainer.run.eval_image_path(step, trainer.config.sample.single_image_seed)
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255


def run(model: str, seed: int, mode: str, steps: int, folder: Path, learning_rate: float, overrides: list[str]) -> list[dict]:
    """One session: ``steps`` painted steps, then one all-zero step; per step the change inside/outside the map."""
    config = session_config(model, "nature landscape", seed, folder / f"{mode}_{seed}", learning_rate, timesteps_per_forward=20)
    config = validate_config(apply_overrides(config.model_dump(mode="json", exclude_none=True), [f"sample.single_image_noise={mode!r}", *overrides]))
    annotator = simulated_annotator(increase=["tree"], decrease=["water"])
    maps: list[np.ndarray] = []

    def painting(images: torch.Tensor, prompts, metadata) -> torch.Tensor:  # the annotator, remembered
        heatmaps = annotator(images, prompts, metadata)
        maps.append(heatmaps[0].cpu().numpy())
        return heatmaps * (len(maps) <= steps)  # the last step's map is all zero

    trainer = Trainer(config, reward_fn=painting, progress=False)
    trainer.begin()
    rows = []
    for step in range(steps + 1):
        trainer.step(step + 1)
        before, after = shown(trainer, step), shown(trainer, step + 1)
        painted = (maps[step] != 0) & (step < steps)  # the last step's map is all zero: every pixel unpainted
        change = np.abs(after - before).mean(axis=2)  # [H, W]
        rows.append(
            {
                "seed": seed,
                "mode": mode,
                "step": step,
                "map": "painted" if step < steps else "all zero",
                "painted_fraction": float(painted.mean()),
                "change_painted": float(change[painted].mean()) if painted.any() else float("nan"),
                "change_unpainted": float(change[~painted].mean()) if (~painted).any() else float("nan"),
                "change_all": float(change.mean()),
            }
        )
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per mode: mean and std over seeds of each seed's mean over its painted steps, and the all-zero step."""
    summary = {}
    for mode in [m for m in MODES if any(r["mode"] == m for r in rows)]:
        seeds = sorted({r["seed"] for r in rows if r["mode"] == mode})
        per_seed = {
            key: [np.nanmean([r[key] for r in rows if r["mode"] == mode and r["seed"] == s and r["map"] == "painted"]) for s in seeds]
            for key in ("change_painted", "change_unpainted", "painted_fraction")
        }
        ratio = [p / u for p, u in zip(per_seed["change_painted"], per_seed["change_unpainted"])]
        zero = [r["change_all"] for r in rows if r["mode"] == mode and r["map"] == "all zero"]
        summary[mode] = {
            **{k: (float(np.mean(v)), float(np.std(v))) for k, v in per_seed.items()},
            "ratio": (float(np.mean(ratio)), float(np.std(ratio))),
            "zero_step_change": (float(np.mean(zero)), float(np.std(zero))),
        }
    return summary


def write(rows: list[dict], summary: dict, args: argparse.Namespace, seconds: float) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = lambda pair, d=4: f"{pair[0]:.{d}f} ± {pair[1]:.{d}f}"  # noqa: E731
    number = lambda x: "-" if np.isnan(x) else f"{x:.4f}"  # noqa: E731  (no painted pixels: no change to measure there)
    lines = [
        "# What a painted step changes: painted region against unpainted",
        "",
        f"`python benchmarks/painted_step_change.py --seeds {' '.join(map(str, args.seeds))} --steps {args.steps} --model {args.model}"
        f" --learning-rate {args.learning_rate:g}{''.join(f' --set {o}' for o in args.overrides)}"
        f"{'' if list(args.modes) == list(MODES) else ' --modes ' + ' '.join(args.modes)} --out {args.out}`"
        f" ({seconds / 60:.1f} min on this machine's 2 CPU cores).",
        "",
        f"The app's session settings (20 DDIM steps, eta 0.3, lr {args.learning_rate:g}, 2 inner epochs"
        f"{''.join(f'; {o}' for o in args.overrides)}); the simulated annotator paints +2 on"
        " trees and -2 on water of each shown image. Change: mean absolute pixel change (RGB in [0, 1]) between the image a"
        f" map was painted on and the next shown image, inside and outside the painted pixels; mean ± std over {len(args.seeds)}"
        f" seeds of each seed's mean over its {args.steps} painted steps. Then one step with an all-zero map (its change: over all"
        " pixels).",
        "",
        "| step noise | painted pixels | change, painted | change, unpainted | painted / unpainted | change after an all-zero step |",
        "|---|---|---|---|---|---|",
    ]
    for mode in summary:
        s = summary[mode]
        label = "fixed (the app)" if mode == "fixed" else "fresh (before)"
        lines.append(
            f"| {label} | {s['painted_fraction'][0]:.0%} | {fmt(s['change_painted'])} | {fmt(s['change_unpainted'])} | "
            f"{fmt(s['ratio'], 2)} | {fmt(s['zero_step_change'])} |"
        )
    lines += ["", "Per step:", "", "| noise | seed | step | map | painted pixels | change, painted | change, unpainted |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['seed']} | {r['step']} | {r['map']} | {r['painted_fraction']:.0%} | {number(r['change_painted'])} | "
            f"{number(r['change_unpainted'])} |"
        )
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    plain = [{k: None if isinstance(v, float) and np.isnan(v) else v for k, v in r.items()} for r in rows]  # strict JSON
    atomic_write_text(out.with_suffix(".json"), json.dumps({"args": vars(args), "summary": summary, "rows": plain}, indent=1))

    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.38
    for i, (key, label, colour) in enumerate((("change_painted", "painted pixels", "tab:green"), ("change_unpainted", "unpainted pixels", "tab:grey"))):
        for j, mode in enumerate(summary):
            values = [np.nanmean([r[key] for r in rows if r["mode"] == mode and r["seed"] == s and r["map"] == "painted"]) for s in args.seeds]
            x = j + (i - 0.5) * width
            ax.bar(x, np.mean(values), width, color=colour, alpha=0.8, label=label if j == 0 else None)
            ax.scatter(np.full(len(values), x), values, color="black", s=10, zorder=3)
    labels = {"fixed": "fixed step noise (the app)", "fresh": "fresh step noise (before)"}
    ax.set_xticks(range(len(summary)), [labels[m] for m in summary])
    ax.set_ylabel("mean |pixel change| per step")
    ax.set_title(f"what a painted step changes ({len(args.seeds)} seeds, dots: each seed)")
    ax.legend()
    save_figure(fig, out.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=4, help="painted steps per session (then one all-zero step)")
    parser.add_argument("--model", default="pxpo-tiny")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="the app's default: 1e-2")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="the step-noise designs to run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a config override on the session's settings")
    parser.add_argument("--out", default="docs/benchmarks/painted_step_change", help="output path without suffix")
    args = parser.parse_args()

    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for mode in args.modes:
                rows += run(args.model, seed, mode, args.steps, Path(folder), args.learning_rate, args.overrides)
                last = [r for r in rows if r["mode"] == mode and r["seed"] == seed]
                print(mode, seed, [(round(r["change_painted"], 4), round(r["change_unpainted"], 4)) for r in last], flush=True)
    summary = summarise(rows)
    write(rows, summary, args, time.perf_counter() - start)
    for mode, s in summary.items():
        print(mode, {k: tuple(round(x, 4) for x in v) for k, v in s.items()})


if __name__ == "__main__":
    main()
