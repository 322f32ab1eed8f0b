"""Where an epoch's time goes, PXPO and DDPO side by side in one process (epochs interleaved).

The time of one training epoch (sample -> reward -> advantage -> update; no evaluation) is split into
denoiser (UNet or transformer) forward while sampling, VAE decode, reward, denoiser forward and
backward while training, optimizer, and everything else (the epoch's time minus those). The timers
wrap the models' methods from outside the trainer; a denoiser forward counts as training when
gradients are on. "PXPO / scalar" is PXPO's time over the scalar loss's (DDPO, or GRPO with groups).
Timings on shared machines are noisy: compare by ratios from the same run.

    python benchmarks/speed.py --samples 8 --steps 20 --epochs 3 --out docs/benchmarks/speed.md
    python benchmarks/speed.py --model pxpo-tiny-flow --steps 10 --group-size 4 --out docs/benchmarks/speed_flow.md
    python benchmarks/speed.py --model sd15-random --height 512 ...   (GPU: SD v1.5 size, random weights)
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from pxpo.config import validate_config  # noqa: E402
from pxpo.io import atomic_write_text  # noqa: E402
from pxpo.trainer import Trainer  # noqa: E402

PARTS = ["denoiser_forward_sampling", "vae_decode", "reward", "denoiser_forward_training", "backward", "optimizer", "other"]


class Timers:
    """Accumulates seconds per part; wraps callables so that each call is timed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, fn, part):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            name = part(*args, **kwargs) if callable(part) else part
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.seconds[name] += time.perf_counter() - start

        return timed


def instrument(trainer: Trainer, timers: Timers) -> None:
    pipe = trainer.pipe
    denoiser = trainer.family.denoiser
    denoiser.forward = timers.wrap(
        denoiser.forward, lambda *a, **k: "denoiser_forward_training" if torch.is_grad_enabled() else "denoiser_forward_sampling"
    )
    pipe.vae.decode = timers.wrap(pipe.vae.decode, "vae_decode")
    trainer.reward_fn = timers.wrap(trainer.reward_fn, "reward")
    trainer.accelerator.backward = timers.wrap(trainer.accelerator.backward, "backward")
    trainer.optimizer.step = timers.wrap(trainer.optimizer.step, "optimizer")


def build_trainer(algorithm: str, args: argparse.Namespace, folder: str) -> Trainer:
    config = validate_config(
        {
            "model": {"pretrained": args.model, "gradient_checkpointing": args.gradient_checkpointing,
                      "mixed_precision": args.mixed_precision},
            "sample": {"num_steps": args.steps, "batch_size": args.samples, "height": args.height, "width": args.height,
                       "group_size": args.group_size},
            "train": {"algorithm": algorithm, "batch_size": args.train_batch_size,
                      "timesteps_per_forward": min(args.timesteps_per_forward, args.steps)},
            "advantage": {"normalization": "group" if args.group_size > 1 else "batch"},
            "eval": {"seeds": [0]},
            "run": {"num_epochs": args.epochs, "output_dir": folder, "name": algorithm},
        }
    )
    pipeline = None
    if args.model == "sd15-random":
        from pxpo.world.architecture import build_sd15_random_pipeline

        pipeline = build_sd15_random_pipeline()
    return Trainer(config, pipeline=pipeline, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pxpo-tiny", help="a model reference, or sd15-random (SD v1.5 architecture, random weights)")
    parser.add_argument("--samples", type=int, default=8, help="samples per epoch")
    parser.add_argument("--train-batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--group-size", type=int, default=1, help="samples per prompt group (group normalisation when > 1)")
    parser.add_argument("--timesteps-per-forward", type=int, default=1, help="train.timesteps_per_forward")
    parser.add_argument("--height", type=int, default=None, help="image size in pixels (default: the model's)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per algorithm (the first is a warm-up, not counted)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--out", help="write the markdown report here")
    args = parser.parse_args()

    records: dict[str, list[dict]] = {"pxpo": [], "ddpo": []}
    with tempfile.TemporaryDirectory() as folder:
        trainers = {alg: build_trainer(alg, args, folder) for alg in records}
        timers = {alg: Timers() for alg in records}
        for alg, trainer in trainers.items():
            instrument(trainer, timers[alg])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        for epoch in range(1, args.epochs + 1):
            for alg, trainer in trainers.items():  # interleaved: both see the same machine load
                timers[alg].seconds.clear()
                start = time.perf_counter()
                trainer.run_epoch(epoch, evaluate=False)
                total = time.perf_counter() - start
                parts = dict(timers[alg].seconds)
                parts["other"] = total - sum(parts.values())
                records[alg].append({"total": total, **parts})
                print(alg, epoch, {k: round(v, 3) for k, v in records[alg][-1].items()}, flush=True)
        peak_gb = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None

    measured = {alg: rs[1:] or rs for alg, rs in records.items()}
    median = {alg: {k: statistics.median(r.get(k, 0.0) for r in rs) for k in ["total", *PARTS]} for alg, rs in measured.items()}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    lines = [
        f"`{args.model}`, {args.samples} samples/epoch (groups of {args.group_size}), {args.steps} denoising steps, train batch "
        f"{args.train_batch_size}, {args.timesteps_per_forward} step(s) per denoiser call, {device}; median of "
        f"{len(measured['pxpo'])} epoch(s) after a warm-up, PXPO and the scalar loss interleaved in one process.",
        "",
        "| algorithm | total s/epoch | s/sample | " + " | ".join(PARTS) + " | outside model compute |",
        "| --- |" + " --- |" * (len(PARTS) + 3),
    ]
    for alg, m in median.items():
        outside = (m["optimizer"] + m["other"]) / m["total"]  # not denoiser, VAE or reward-model work
        lines.append(
            f"| {alg} | {m['total']:.2f} | {m['total'] / args.samples:.3f} | " + " | ".join(f"{m[k]:.3f}" for k in PARTS) + f" | {outside:.1%} |"
        )
    ratio = median["pxpo"]["total"] / median["ddpo"]["total"]
    lines += ["", f"PXPO / scalar time per epoch: {ratio:.3f}"]
    if peak_gb is not None:
        lines.append(f"Peak GPU memory: {peak_gb:.2f} GiB")
    report = "\n".join(lines)
    print(report)
    if args.out:
        atomic_write_text(args.out, report + "\n")


if __name__ == "__main__":
    main()
