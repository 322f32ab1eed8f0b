"""Calibrate PXPO's clip range: how far do per-element ratios move, next to DDPO's element-mean ratios?

DDPO clips the ratio of element-MEAN log-probabilities at 1e-4. PXPO's ratios are per element: each
one moves much more than their mean (the noise of thousands of elements averages out in the mean),
so the same number would clip almost everything. This script lets the trainer take one optimizer step
(one epoch whose samples form one training batch: gradients summed over all steps), recomputes every
log-probability, and reports the spread of |ratio - 1| per element and per image-step mean, and each
candidate clip range's clip fraction. A clip range "equivalent" to DDPO's 1e-4 clips the same fraction.

    python benchmarks/clip_range.py --model tiny-random --out docs/clip_range.md
"""

from __future__ import annotations

import _common as bench

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pxpo.algorithms import algorithm_class
from pxpo.hooks import Callback
from pxpo.rollout import recompute_log_prob

CANDIDATES = [1e-4, 1e-3, 2e-3, 3e-3, 1e-2, 3e-2, 1e-1]
DDPO_RANGE = algorithm_class("ddpo").default_clip_range


class KeepSamples(Callback):
    """Keeps the trajectories that the sample phase returns."""

    def on_phase_end(self, trainer, phase, epoch, result) -> None:
        if phase == "sample":
            self.trajectories = result


def log_prob_change(args, algorithm: str, lr: float, seed: int, folder: str) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Δ log p [N, T, C, h, w] of the sampled steps after the trainer's one optimizer step of ``algorithm``; the latent shape."""
    samples = KeepSamples()
    trainer = bench.build_trainer({
        "model": {"pretrained": args.model, "lora": True, "lora_rank": 4},
        "sample": {"prompts": [args.prompt], "num_steps": args.steps, "batch_size": args.samples, "guidance_scale": 5.0, "eta": 1.0,
                   "noise_level": 1.0},
        "train": {"algorithm": algorithm, "learning_rate": lr, "batch_size": args.samples, "num_inner_epochs": 1,
                  "timesteps_per_forward": args.steps, "max_grad_norm": 1.0},
        "advantage": {"normalization": "batch"},
        "reward": {"name": "blue_penalty"},
        "run": {"num_epochs": 1, "seed": seed},
    }, args.overrides, folder=folder, name=f"{algorithm}-{lr:g}-{seed}", callbacks=[samples])  # fmt: skip
    trainer.run_epoch(1, evaluate=False)
    traj, cfg = samples.trajectories, trainer.config.sample
    n = len(traj)
    with torch.no_grad(), trainer.accelerator.autocast():
        new = torch.stack([recompute_log_prob(trainer.family, trainer.family.denoiser, traj, torch.arange(n), torch.full((n,), j),
                                              guidance_scale=cfg.guidance_scale, noise_level=trainer.family.policy_noise(cfg.eta, cfg.noise_level)
                                              ).log_prob for j in range(traj.timesteps.shape[0])], dim=1)  # fmt: skip
    return (new - traj.log_probs).float().cpu(), trainer.latent_shape


def measure(args, algorithm: str, lr: float, folder: str) -> dict:
    start = time.perf_counter()
    deltas = [log_prob_change(args, algorithm, lr, seed, folder) for seed in args.seeds]
    element = torch.cat([(d.exp() - 1).abs().flatten() for d, _ in deltas]).numpy()
    mean = torch.cat([(d.mean(dim=(2, 3, 4)).exp() - 1).abs().flatten() for d, _ in deltas]).numpy()
    ddpo_clipfrac = float((mean > DDPO_RANGE).mean())
    return {
        "lr": lr,
        "step": algorithm,
        "latent_shape": list(deltas[0][1]),
        "element_p50": float(np.quantile(element, 0.5)),
        "element_p90": float(np.quantile(element, 0.9)),
        "mean_p50": float(np.quantile(mean, 0.5)),
        "mean_p90": float(np.quantile(mean, 0.9)),
        "ddpo_clipfrac": ddpo_clipfrac,
        "pxpo_clipfrac": {f"{c:g}": float((element > c).mean()) for c in CANDIDATES},
        # the per-element clip range that clips the share DDPO's range clips of the element-mean ratios
        "equivalent_range": float(np.quantile(element, 1 - ddpo_clipfrac)),
        "seconds": time.perf_counter() - start,
    }


def reading(rows: list[dict]) -> list[str]:
    """What the table says, from its numbers."""
    c, h, w = rows[0]["latent_shape"]
    ratios = [r["element_p50"] / r["mean_p50"] for r in rows if r["mean_p50"] > 0]
    lrs = sorted({r["lr"] for r in rows})
    ddpo = ", ".join(f"{bench.span((r['ddpo_clipfrac'] for r in rows if r['lr'] == lr), '{:.0%}')} after one step at lr {lr:g}" for lr in lrs)
    equivalent = [r["equivalent_range"] for r in rows]
    pxpo_default = algorithm_class("pxpo").default_clip_range
    return [
        f"Reading (measured on `{rows[0]['model']}`, {c} x {h} x {w} latents): the median per-element |ratio - 1| is "
        f"{bench.span(ratios, '{:.1f}')} times the element-mean's. DDPO's {DDPO_RANGE:g} on the mean clips this share of image-steps: {ddpo}; "
        f"the same {DDPO_RANGE:g} on per-element ratios would clip {bench.span((r['pxpo_clipfrac'][f'{DDPO_RANGE:g}'] for r in rows), '{:.0%}')} "
        f"of elements. The per-element clip range that clips the same share as DDPO's {DDPO_RANGE:g} is "
        f"{bench.span(equivalent, '{:.1e}')} (last column); pxpo's default for PXPO is {pxpo_default:g} "
        f"(`default_clip_range` in `pxpo/algorithms/policy_gradient.py`), DDPO keeps {DDPO_RANGE:g}.",
        "",
        "Caveat: an element-mean over more elements (SD v1.4: 4 x 64 x 64) moves less, so there DDPO's range corresponds "
        "to a larger per-element range; re-run this script on your model (`--model`) and set `train.clip_range`. The clip "
        "fraction is logged every epoch (`clipfrac` in metrics.jsonl). Clipping only acts from the second optimizer step "
        "of an epoch on (the first is on-policy), i.e. when train.batch_size is smaller than the epoch's samples or "
        "num_inner_epochs > 1.",
    ]


def main() -> None:
    parser = bench.arguments(__doc__, seeds=[0], overrides=True, out=None)
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompt", default="red taxi in traffic")
    parser.add_argument("--out", help="write the markdown report (and its .json) here")
    args = bench.parse(parser)

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for lr in args.lrs:
            for algorithm in ["ddpo", "pxpo"]:
                rows.append({"model": args.model, **measure(args, algorithm, lr, folder)})
                print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)

    header = ["lr", "optimizer step", "per-element \\|r-1\\| p50 / p90", "element-mean \\|r-1\\| p50 / p90",
              f"DDPO clipfrac @{DDPO_RANGE:g} (mean ratio)", *(f"PXPO clipfrac @{c:g}" for c in CANDIDATES),
              "per-element range clipping as much"]  # fmt: skip
    table = bench.table(header, [[f"{r['lr']:g}", r["step"], f"{r['element_p50']:.2e} / {r['element_p90']:.2e}",
                                  f"{r['mean_p50']:.2e} / {r['mean_p90']:.2e}", f"{r['ddpo_clipfrac']:.2f}",
                                  *(f"{r['pxpo_clipfrac'][f'{c:g}']:.2f}" for c in CANDIDATES), f"{r['equivalent_range']:.1e}"] for r in rows])  # fmt: skip
    lines = ["# PXPO's clip range on per-element ratios", "", INTRO.format(ddpo=DDPO_RANGE, seeds=", ".join(map(str, args.seeds))), "",
             *table, "", *reading(rows)]  # fmt: skip
    bench.write_markdown(args.out, lines)
    if args.out:
        bench.write_json(Path(args.out).with_suffix(".json"), {"rows": rows})


INTRO = """DDPO clips the ratio of element-MEAN log-probabilities at {ddpo:g} (Black et al.; a plain sum gave NaNs).
PXPO pairs each latent element with its own advantage, so its PPO ratio is per element, and a
per-element ratio moves far more than the mean of thousands of them. The measurement: sample a
batch with the base model, let the trainer take ONE optimizer step (LoRA rank 4, gradients summed over all steps,
norm clipped to 1, blue-penalty advantages), recompute every step's log-probability, and look at
|ratio - 1| per element and per image-step mean (run seeds {seeds}, pooled). A clip fraction is the share of ratios
a clip range would clip in the next training batch of the same epoch."""

if __name__ == "__main__":
    main()
