"""Where an epoch's time goes, PXPO and DDPO side by side in one process (epochs interleaved).

The time of one training epoch (sample -> reward -> advantage -> update; no evaluation) is split into
denoiser (UNet or transformer) forward while sampling, VAE decode, reward, denoiser forward and
backward while training, optimizer, and everything else (the epoch's time minus those). Nothing in the
trainer is replaced: the phases are timed by a ``pxpo.hooks.Callback``, the models' compute by PyTorch
hooks (forward hooks on the denoiser and the VAE's decoder, the optimizer's step hooks, and for the
backward pass a hook on the denoiser's output gradient, where its backward starts, and a multi-grad hook
on the trainable parameters, where it ends). A denoiser forward counts as training in the update phase.
``--algorithms`` picks the trainers (default PXPO and DDPO/GRPO; also awm, pxawm); each later one's time is given as a
ratio to the first's. A label ALGORITHM+NAME is that algorithm with the settings ``--tweak ALGORITHM+NAME=SECTION.KEY=VALUE``
(repeatable), e.g. the preservation term or the regional adapter beside plain PXPO. Timings on shared machines are
noisy: compare by ratios from the same run.

    python benchmarks/speed.py --samples 8 --steps 20 --epochs 3 --out docs/benchmarks/speed.md
    python benchmarks/speed.py --model pxpo-tiny-flow --steps 10 --group-size 4 --out docs/benchmarks/speed_flow.md
    python benchmarks/speed.py --model pxpo-tiny-flow --steps 10 --group-size 4 --algorithms pxpo ddpo pxawm awm \
        --set 'sample.sde_window=[3, 5]' --out docs/benchmarks/speed_window.md
    python benchmarks/speed.py --model pxpo-tiny-flow --steps 10 --group-size 4 --algorithms pxpo pxpo+base pxpo+regional \
        --tweak pxpo+base=train.preserve_coef=1 --tweak pxpo+regional=train.regional_adapter=true --set ...
    python benchmarks/speed.py --model sd15-random --height 512 ...   (GPU: SD v1.5 size, random weights)
"""

from __future__ import annotations

import _common as bench

import statistics
import tempfile
import time
from collections import defaultdict

import torch

from pxpo.hooks import PHASES, Callback
from pxpo.trainer import Trainer

PARTS = ["denoiser_forward_sampling", "vae_decode", "reward", "denoiser_forward_training", "backward", "optimizer", "other"]
MODEL_PHASES = [p for p in PHASES if p != "evaluate"]  # an epoch here: evaluation is not timed


def now() -> float:
    """The time, once the device has finished what was queued (GPU work is asynchronous)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def first_tensor(output) -> torch.Tensor | None:
    """A module output's main tensor: the tensor itself, or the first of a tuple or diffusers output."""
    if isinstance(output, torch.Tensor):
        return output
    try:
        return output[0] if isinstance(output[0], torch.Tensor) else None
    except (TypeError, IndexError, KeyError):
        return None


class Timer(Callback):
    """Seconds per phase (``phases``) and per part of model compute (``parts``) of a trainer, through hooks only."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.phases: dict[str, float] = defaultdict(float)
        self.parts: dict[str, float] = defaultdict(float)
        self._phase_start = 0.0
        self._backward_start: float | None = None

    def clear(self) -> None:
        self.phases.clear()
        self.parts.clear()

    # phases (pxpo.hooks) ----------------------------------------------------------------------------
    def on_phase_begin(self, trainer, phase, epoch) -> None:
        self.phase, self._phase_start = phase, now()

    def on_phase_end(self, trainer, phase, epoch, result) -> None:
        self.phases[phase] += now() - self._phase_start
        if phase == "reward":
            self.parts["reward"] += now() - self._phase_start  # the reward function: a model or any code, counted as compute
        self.phase = None

    # model compute (torch hooks) ---------------------------------------------------------------------
    def attach(self, trainer: Trainer) -> None:
        """Hook the trainer's denoiser, VAE decoder, optimizer and trainable parameters."""
        self._time_module(trainer.family.denoiser, self._denoiser_part, on_output=self._watch_backward)
        vae = trainer.pipe.vae
        for module in (getattr(vae, "post_quant_conv", None), vae.decoder):  # what vae.decode runs
            if isinstance(module, torch.nn.Module):
                self._time_module(module, lambda: "vae_decode")
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # the torch optimizer inside accelerate's wrapper
        start = {}
        optimizer.register_step_pre_hook(lambda *_: start.__setitem__("t", now()))
        optimizer.register_step_post_hook(lambda *_: self._add("optimizer", start.pop("t")))
        params = [p for p in trainer.denoiser.parameters() if p.requires_grad]
        torch.autograd.graph.register_multi_grad_hook(params, self._backward_done, mode="all")

    def _time_module(self, module: torch.nn.Module, part, on_output=None) -> None:
        starts = []
        module.register_forward_pre_hook(lambda *_: starts.append(now()))

        def done(mod, args, output):
            self._add(part(), starts.pop())
            if on_output is not None:
                on_output(output)

        module.register_forward_hook(done)

    def _denoiser_part(self) -> str:
        return "denoiser_forward_training" if self.phase == "update" else "denoiser_forward_sampling"

    def _watch_backward(self, output) -> None:
        tensor = first_tensor(output)
        if tensor is not None and tensor.requires_grad:  # the backward pass reaches the denoiser here
            tensor.register_hook(self._backward_reached)

    def _backward_reached(self, grad: torch.Tensor) -> None:
        if self._backward_start is None:
            self._backward_start = now()

    def _backward_done(self, grads) -> None:  # every trainable parameter's gradient is computed
        if self._backward_start is not None:
            self._add("backward", self._backward_start)
            self._backward_start = None

    def _add(self, part: str, start: float) -> None:
        self.parts[part] += now() - start


def build_trainer(label: str, args, folder: str, timer: Timer) -> Trainer:
    pipeline = None
    if args.model == "sd15-random":
        from pxpo.world.architecture import build_sd15_random_pipeline

        pipeline = build_sd15_random_pipeline()
    trainer = bench.build_trainer({
        "model": {"pretrained": args.model, "gradient_checkpointing": args.gradient_checkpointing, "mixed_precision": args.mixed_precision},
        "sample": {"num_steps": args.steps, "batch_size": args.samples, "height": args.height, "width": args.height,
                   "group_size": args.group_size},
        "train": {"algorithm": label.split("+")[0], "batch_size": args.train_batch_size, "timesteps_per_forward": min(args.timesteps_per_forward, args.steps)},
        "advantage": {"normalization": "group" if args.group_size > 1 else "batch"},
        "eval": {"seeds": [0]},
        "run": {"num_epochs": args.epochs},
    }, [*args.overrides, *tweaks(args, label)], folder=folder, name=label, pipeline=pipeline, callbacks=[timer])  # fmt: skip
    timer.attach(trainer)
    return trainer


def tweaks(args, label: str) -> list[str]:
    """The ``--tweak LABEL=SECTION.KEY=VALUE`` overrides of one trainer."""
    return [t.split("=", 1)[1] for t in args.tweak if t.split("=", 1)[0] == label]


def main() -> None:
    parser = bench.arguments(__doc__, overrides=True, out=None)
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
    parser.add_argument("--algorithms", nargs="+", default=["pxpo", "ddpo"], help="train.algorithm of each trainer (interleaved)")
    parser.add_argument("--tweak", action="append", default=[], metavar="LABEL=SECTION.KEY=VALUE", help="a setting of one trainer")
    parser.add_argument("--out", help="write the markdown report here")
    args = bench.parse(parser)
    for tweak in args.tweak:
        if tweak.split("=", 1)[0] not in args.algorithms or "=" not in tweak.split("=", 1)[-1]:
            parser.error(f"--tweak {tweak!r}: expected LABEL=SECTION.KEY=VALUE with LABEL one of --algorithms ({', '.join(args.algorithms)})")

    records: dict[str, list[dict]] = {alg: [] for alg in args.algorithms}
    with tempfile.TemporaryDirectory() as folder:
        timers = {alg: Timer() for alg in records}
        trainers = {alg: build_trainer(alg, args, folder, timers[alg]) for alg in records}
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        for epoch in range(1, args.epochs + 1):
            for alg, trainer in trainers.items():  # interleaved: both see the same machine load
                timers[alg].clear()
                start = now()
                trainer.run_epoch(epoch, evaluate=False)
                total = now() - start
                parts = {k: timers[alg].parts.get(k, 0.0) for k in PARTS[:-1]}
                parts["other"] = total - sum(parts.values())
                records[alg].append({"total": total, **parts, **{f"phase_{p}": timers[alg].phases.get(p, 0.0) for p in MODEL_PHASES}})
                print(alg, epoch, {k: round(v, 3) for k, v in records[alg][-1].items()}, flush=True)
        peak_gb = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None

    measured = {alg: rs[1:] or rs for alg, rs in records.items()}
    median = {alg: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for alg, rs in measured.items()}
    lines = [
        f"`{args.model}`, {args.samples} samples/epoch (groups of {args.group_size}), {args.steps} denoising steps, train batch "
        f"{args.train_batch_size}, {args.timesteps_per_forward} step(s) per denoiser call, {bench.machine()}; median of "
        f"{len(measured[args.algorithms[0]])} epoch(s) after a warm-up, {', '.join(args.algorithms)} interleaved in one process"
        + (f" (every one with {', '.join(args.overrides)})" if args.overrides else "")
        + "".join(f"; {label} with {', '.join(tweaks(args, label))}" for label in args.algorithms if tweaks(args, label)) + ".",
        "",
    ]
    rows = []
    for alg, m in median.items():
        outside = (m["optimizer"] + m["other"]) / m["total"]  # not denoiser, VAE or reward-model work
        rows.append([alg, f"{m['total']:.2f}", f"{m['total'] / args.samples:.3f}", *(f"{m[k]:.3f}" for k in PARTS), f"{outside:.1%}"])
    lines += bench.table(["algorithm", "total s/epoch", "s/sample", *PARTS, "outside model compute"], rows)
    lines += ["", "Seconds per phase (pxpo.hooks; \"other\" above is what the phases spend outside the models, plus the epoch's own overhead):", ""]
    lines += bench.table(["algorithm", *MODEL_PHASES], [[alg, *(f"{m[f'phase_{p}']:.3f}" for p in MODEL_PHASES)] for alg, m in median.items()])
    first = args.algorithms[0]
    lines += ["", "Time per epoch: " + ", ".join(f"{alg} / {first} {median[alg]['total'] / median[first]['total']:.3f}" for alg in args.algorithms[1:])]
    if peak_gb is not None:
        lines.append(f"Peak GPU memory: {peak_gb:.2f} GiB")
    bench.write_markdown(args.out, lines)


if __name__ == "__main__":
    main()
