"""Seconds per epoch, PXPO and DDPO side by side in one process (epochs interleaved).

Timings on shared machines are noisy: compare the two algorithms by their ratio, measured here in
the same run, not against numbers from another run. Prints a markdown table; --out writes it.

    python benchmarks/speed.py --model tiny-random --samples 8 --steps 20 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pxpo.config import validate_config  # noqa: E402
from pxpo.io import atomic_write_text  # noqa: E402
from pxpo.trainer import Trainer  # noqa: E402

PHASES = ["sample_seconds", "reward_seconds", "train_seconds"]


def build_trainer(algorithm: str, args: argparse.Namespace, folder: str) -> Trainer:
    config = validate_config(
        {
            "model": {"pretrained": args.model},
            "sample": {"num_steps": args.steps, "batch_size": args.samples},
            "train": {"algorithm": algorithm, "batch_size": args.train_batch_size},
            "eval": {"seeds": [0]},
            "run": {"num_epochs": args.epochs, "output_dir": folder, "name": algorithm},
        }
    )
    return Trainer(config, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--samples", type=int, default=8, help="samples per epoch")
    parser.add_argument("--train-batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per algorithm (the first is a warm-up, not counted)")
    parser.add_argument("--out", help="write the markdown table here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        trainers = {alg: build_trainer(alg, args, folder) for alg in ["pxpo", "ddpo"]}
        times: dict[str, list[dict]] = {alg: [] for alg in trainers}
        for epoch in range(1, args.epochs + 1):
            for alg, trainer in trainers.items():  # interleaved: both see the same machine load
                record = trainer.run_epoch(epoch)
                times[alg].append(record)
                print(alg, epoch, {k: round(record[k], 2) for k in PHASES}, flush=True)

    measured = {alg: records[1:] or records for alg, records in times.items()}
    median = {alg: {k: statistics.median(r[k] for r in records) for k in PHASES} for alg, records in measured.items()}
    lines = [
        f"Tiny pipeline `{args.model}`, {args.samples} samples/epoch, {args.steps} DDIM steps, train batch {args.train_batch_size}, "
        f"median of {len(measured['pxpo'])} epoch(s) after a warm-up, interleaved in one process.",
        "",
        "| algorithm | sampling s/epoch | reward s/epoch | training s/epoch | total s/epoch |",
        "| --- | --- | --- | --- | --- |",
    ]
    for alg, m in median.items():
        lines.append(f"| {alg} | {m['sample_seconds']:.2f} | {m['reward_seconds']:.3f} | {m['train_seconds']:.2f} | {sum(m.values()):.2f} |")
    ratio = sum(median["pxpo"].values()) / sum(median["ddpo"].values())
    lines += ["", f"PXPO / DDPO time per epoch: {ratio:.3f}"]
    table = "\n".join(lines)
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")


if __name__ == "__main__":
    main()
