"""pxpo's DDPO against TRL 0.23.1's DDPOTrainer (the one runnable public peer), on the same bundled pipeline.

Same samples per epoch, DDIM steps, guidance, eta, LoRA (rank 4 on to_q/k/v/out), learning rate, train
batch, clip range (1e-4) and reward (the blue penalty, per image). Each trainer runs in its own
process (TRL in its own venv, .venv-trl, made by this script on first use); the processes alternate
pxpo, TRL, pxpo, TRL... so both see the same machine load. Reports seconds per epoch (median after
the first epoch) and peak resident memory, and their ratios.

    python benchmarks/peer_trl.py --epochs 3 --rounds 2 --out docs/benchmarks/peer_trl.md
"""

from __future__ import annotations

import _common as bench

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = bench.ROOT
TRL_VENV = ROOT / ".venv-trl"
TRL_PACKAGES = ["torch==2.13.0", "trl==0.23.1", "diffusers==0.42.1", "transformers==5.23.0", "peft==0.21.2",
                "accelerate==1.15.0", "safetensors==0.8.0"]  # fmt: skip


def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import trl"], capture_output=True).returncode:
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_PACKAGES], check=True)
    return python


def pxpo_child(args: argparse.Namespace) -> None:
    """Run pxpo's DDPO for args.epochs epochs and print one JSON line per epoch (as trl_runner.py does)."""
    with tempfile.TemporaryDirectory() as folder:
        trainer = bench.build_trainer({
            "model": {"pretrained": args.model, "lora": True, "lora_rank": 4},
            "sample": {"prompts": [args.prompt], "num_steps": args.steps, "guidance_scale": args.guidance_scale, "eta": 1.0,
                       "batch_size": args.samples},
            "train": {"algorithm": "ddpo", "batch_size": args.train_batch_size, "learning_rate": args.learning_rate,
                      "clip_range": 1e-4, "timesteps_per_forward": args.timesteps_per_forward},
            "eval": {"seeds": [0]},
            "run": {"num_epochs": args.epochs, "seed": args.seed},
        }, folder=folder, name="peer")  # fmt: skip
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            trainer.run_epoch(epoch, evaluate=False)
            bench.print_epoch(epoch, time.perf_counter() - start)


def run(command: list[str]) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}  # OMP_WAIT_POLICY: set by _common
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{command[:2]} failed:\n{done.stderr[-3000:]}")
    return bench.epoch_lines(done.stdout)


def main() -> None:
    parser = bench.arguments(__doc__)
    parser.add_argument("--model", default=None, help="pipeline folder (default: the bundled pxpo-tiny)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--train-batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per process; the first is a warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of pxpo and TRL")
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--prompt", default="red taxi in traffic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps-per-forward", type=int, default=5,
                        help="the second pxpo row's train.timesteps_per_forward (the first row uses 1, TRL's loop)")
    parser.add_argument("--child", choices=["pxpo"], help=argparse.SUPPRESS)
    parser.add_argument("--out")
    args = bench.parse(parser)
    if args.model is None:
        from pxpo.world import WEIGHTS

        args.model = str(WEIGHTS / "pxpo-tiny")
    if args.child:
        return pxpo_child(args)

    trl_python = ensure_trl_venv()
    shared = ["--model", args.model, "--samples", str(args.samples), "--train-batch-size", str(args.train_batch_size),
              "--steps", str(args.steps), "--epochs", str(args.epochs), "--guidance-scale", str(args.guidance_scale),
              "--learning-rate", str(args.learning_rate), "--prompt", args.prompt, "--seed", str(args.seed)]  # fmt: skip
    pxpo = [sys.executable, __file__, "--child", "pxpo", *shared]
    batched = f"pxpo, {args.timesteps_per_forward} steps per forward"
    trl = "TRL 0.23.1 DDPOTrainer"
    commands = {
        "pxpo, 1 step per forward": [*pxpo, "--timesteps-per-forward", "1"],
        batched: [*pxpo, "--timesteps-per-forward", str(args.timesteps_per_forward)],
        trl: [str(trl_python), str(ROOT / "benchmarks" / "trl_runner.py"), *shared],
    }
    results: dict[str, list[dict]] = {who: [] for who in commands}
    for round_ in range(args.rounds):
        for who, command in commands.items():
            epochs = run(command)
            results[who].append({"seconds": statistics.median(e["seconds"] for e in epochs[1:] or epochs),
                                 "peak_rss_mb": max(e["peak_rss_mb"] for e in epochs)})
            print(who, round_, results[who][-1], flush=True)

    seconds = {w: statistics.median(r["seconds"] for r in rs) for w, rs in results.items()}
    memory = {w: max(r["peak_rss_mb"] for r in rs) for w, rs in results.items()}
    lines = [
        f"DDPO, `{os.path.basename(args.model)}`, {args.samples} samples/epoch, {args.steps} DDIM steps, guidance {args.guidance_scale}, "
        f"LoRA rank 4, train batch {args.train_batch_size}, lr {args.learning_rate}, {bench.machine()}; "
        f"{args.rounds} alternating rounds of {args.epochs} epochs per process (first epoch of each a warm-up). "
        "Both pxpo rows compute the same gradients (tests/test_trainer_update.py checks it); the second batches "
        "several denoising steps of a training batch into one UNet call.",
        "",
    ]
    rows = [[who, f"{seconds[who]:.2f}", f"{seconds[who] / seconds[trl]:.3f}",
             ", ".join(f"{r['seconds'] / t['seconds']:.3f}" for r, t in zip(results[who], results[trl])),
             f"{memory[who]:.0f}", f"{memory[who] / memory[trl]:.3f}"] for who in commands]  # fmt: skip
    lines += bench.table(["trainer", "s/epoch (median)", "time / TRL", "time / TRL per round", "peak RSS (MB)", "memory / TRL"], rows)
    bench.write_markdown(args.out, lines)


if __name__ == "__main__":
    main()
