"""What a painted step changes: the painted region against the unpainted one, in the app's sessions.

For each seed, a session of the app (``pxpo.app.sessions.session_config``: single-image mode, 20 DDIM
steps at eta 0.3, lr 1e-2, 2 inner epochs) is trained by the simulated annotator (+2 on trees, -2 on
water, as the bundled segmenter sees them) for --steps painted steps, then one step with an all-zero map.
After every step the image a person would now see is compared with the one the map was painted on: the
mean absolute pixel change (RGB in [0, 1]) inside the painted pixels and outside them.

Both ways of drawing the denoising steps' noise are run side by side: "fixed" (the app's: the same noise
every step, so the image is a function of the weights) and "fresh" (a new draw each step, as sessions did
before). Writes docs/benchmarks/painted_step_change.{md,json,png}.

    python benchmarks/painted_step_change.py [--seeds 0 1 2 3 4] [--steps 4] [--model pxpo-tiny] [--learning-rate 1e-2] [--set ...]
"""

from __future__ import annotations

import _common as bench

import tempfile
from pathlib import Path

import numpy as np
import torch

from measures import read_image
from pxpo.app.sessions import session_config
from pxpo.rewards.human import simulated_annotator
from pxpo.trainer import Trainer

MODES = ("fixed", "fresh")  # --modes picks some


def shown(trainer: Trainer, step: int) -> np.ndarray:
    """The image a person sees after ``step`` steps (the PNG the app serves), [H, W, 3] in [0, 1]."""
    return read_image(trainer.run.eval_image_path(step, trainer.config.sample.single_image_seed)) / 255


def run(model: str, seed: int, mode: str, steps: int, folder: Path, learning_rate: float, overrides: list[str]) -> tuple[list[dict], Trainer]:
    """One session: ``steps`` painted steps, then one all-zero step; per step the change inside/outside the map (and the trainer)."""
    config = session_config(model, "nature landscape", seed, folder / f"{mode}_{seed}", learning_rate, timesteps_per_forward=20, regional=False)
    annotator = simulated_annotator(increase=["tree"], decrease=["water"])
    maps: list[np.ndarray] = []

    def painting(images: torch.Tensor, prompts, metadata) -> torch.Tensor:  # the annotator, remembered
        heatmaps = annotator(images, prompts, metadata).heatmaps
        maps.append(heatmaps[0].cpu().numpy())
        return heatmaps * (len(maps) <= steps)  # the last step's map is all zero

    trainer = bench.build_trainer(config, [f"sample.single_image_noise={mode!r}", *overrides], reward_fn=painting)
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
    return rows, trainer


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


def write(rows: list[dict], summary: dict, args, trainer: Trainer) -> None:
    out = Path(args.out)
    number = lambda x: "-" if np.isnan(x) else f"{x:.4f}"  # noqa: E731  (no painted pixels: no change to measure there)
    cfg = trainer.config
    noise = trainer.family.policy_noise(cfg.sample.eta, cfg.sample.noise_level)
    lines = [
        "# What a painted step changes: painted region against unpainted",
        "",
        f"The app's session settings on `{cfg.model.pretrained}` ({cfg.sample.num_steps} denoising steps, policy noise"
        f" {noise:g}, lr {cfg.train.learning_rate:g}, {cfg.train.num_inner_epochs} inner epochs); the simulated annotator paints +2 on"
        " trees and -2 on water of each shown image. Change: mean absolute pixel change (RGB in [0, 1]) between the image a"
        f" map was painted on and the next shown image, inside and outside the painted pixels; mean ± std over {len(args.seeds)}"
        f" seeds of each seed's mean over its {args.steps} painted steps. Then one step with an all-zero map (its change: over all"
        " pixels).",
        "",
    ]
    labels = {"fixed": "fixed (the app)", "fresh": "fresh (before)"}
    lines += bench.table(
        ["step noise", "painted pixels", "change, painted", "change, unpainted", "painted / unpainted", "change after an all-zero step"],
        [[labels[mode], f"{s['painted_fraction'][0]:.0%}", bench.plus_minus(*s["change_painted"]), bench.plus_minus(*s["change_unpainted"]),
          bench.plus_minus(*s["ratio"], digits=2), bench.plus_minus(*s["zero_step_change"])] for mode, s in summary.items()],
    )  # fmt: skip
    lines += ["", "Per step:", ""]
    lines += bench.table(["noise", "seed", "step", "map", "painted pixels", "change, painted", "change, unpainted"],
                         [[r["mode"], r["seed"], r["step"], r["map"], f"{r['painted_fraction']:.0%}", number(r["change_painted"]),
                           number(r["change_unpainted"])] for r in rows])  # fmt: skip
    bench.write_markdown(out.with_suffix(".md"), lines, echo=False)
    plain = [{k: None if isinstance(v, float) and np.isnan(v) else v for k, v in r.items()} for r in rows]  # strict JSON
    bench.write_json(out.with_suffix(".json"), {"args": vars(args), "summary": summary, "rows": plain})

    with bench.figure(out.with_suffix(".png"), size=(6, 3.4)) as ax:
        width = 0.38
        for i, (key, label, colour) in enumerate((("change_painted", "painted pixels", "tab:green"), ("change_unpainted", "unpainted pixels", "tab:grey"))):
            for j, mode in enumerate(summary):
                values = [np.nanmean([r[key] for r in rows if r["mode"] == mode and r["seed"] == s and r["map"] == "painted"]) for s in args.seeds]
                x = j + (i - 0.5) * width
                ax.bar(x, np.mean(values), width, color=colour, alpha=0.8, label=label if j == 0 else None)
                ax.scatter(np.full(len(values), x), values, color="black", s=10, zorder=3)
        names = {"fixed": "fixed step noise (the app)", "fresh": "fresh step noise (before)"}
        ax.set_xticks(range(len(summary)), [names[m] for m in summary])
        ax.set_ylabel("mean |pixel change| per step")
        ax.set_title(f"what a painted step changes ({len(args.seeds)} seeds, dots: each seed)")
        ax.legend()


def main() -> None:
    parser = bench.arguments(__doc__, seeds=[0, 1, 2, 3, 4], overrides=True, out="docs/benchmarks/painted_step_change",
                             out_help="output path without suffix (.md, .json, .png)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=4, help="painted steps per session (then one all-zero step)")
    parser.add_argument("--model", default="pxpo-tiny")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="the app's default: 1e-2")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="the step-noise designs to run")
    args = bench.parse(parser)

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for mode in args.modes:
                session, trainer = run(args.model, seed, mode, args.steps, Path(folder), args.learning_rate, args.overrides)
                rows += session
                print(mode, seed, [(round(r["change_painted"], 4), round(r["change_unpainted"], 4)) for r in session], flush=True)
    summary = summarise(rows)
    write(rows, summary, args, trainer)
    for mode, s in summary.items():
        print(mode, {k: tuple(round(x, 4) for x in v) for k, v in s.items()})


if __name__ == "__main__":
    main()
