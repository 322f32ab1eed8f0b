"""Time to reward: wall-clock seconds of training until the evaluation reward reaches the scalar baseline's final value.

Two tasks, both the blue penalty on "red taxi in traffic" (benchmarks/_common.TASKS["blue"]):

- ``tiny`` (pxpo-tiny, DDIM): pxpo's PXPO and DDPO against TRL 0.23.1's DDPOTrainer (peer_trl.py's settings and
  venv); the threshold is TRL DDPO's final reward (mean over seeds).
- ``flow`` (pxpo-tiny-flow, Flow-GRPO's SDE): full-SDE PXPO, windowed PXPO (a 2-step SDE window at a random place
  each epoch), pixel-wise AWM and scalar AWM (deterministic ODE rollouts) and scalar GRPO; the threshold is scalar
  GRPO's final reward.

Timed: sampling + reward + update of each epoch (the trainer's sample/reward/train_seconds; TRL: its ``step``).
Untimed, after every epoch: one evaluation, the same for every method of a task: a pxpo "judge" trainer with the
baseline's sampler loads the method's LoRA (TRL's saved one for TRL) and scores fixed seeds with pxpo's evaluation
reward. The world-quality score (world_quality.py's measure: the fraction of the prompt's key classes the bundled
segmenter finds, over the evaluation images, in points 0-100) is taken on the judge's images before training (the
base model) and after the last epoch. Every (method, seed) runs in its own process, interleaved (seed 0 of every
method, then seed 1, ...) so that machine load hits all alike.

    python benchmarks/time_to_reward.py                        # both tasks, 3 seeds (17 minutes on 2 shared cores)
    python benchmarks/time_to_reward.py --tasks flow --seeds 0 --epochs 2
"""

from __future__ import annotations

import _common as bench

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PROMPT = "red taxi in traffic"
FAMILY = "taxi"  # world_quality's family of PROMPT: its key classes make the quality score
SCENE = {"sample": {"prompts": [PROMPT], "batch_size": 8}, "reward": {"name": "blue_penalty"}}
TINY = bench.merge(SCENE, {  # peer_trl.py's DDPO settings (TRL's runner takes the same numbers)
    "model": {"pretrained": "pxpo-tiny", "lora": True, "lora_rank": 4},
    "sample": {"guidance_scale": 5.0, "eta": 1.0},
    "train": {"batch_size": 4, "timesteps_per_forward": 5},
})  # fmt: skip
FLOW = bench.merge(SCENE, {  # flow_sample_efficiency.py's settings
    "model": {"pretrained": "pxpo-tiny-flow", "lora": True, "lora_rank": 4},
    "sample": {"group_size": 4, "noise_level": 0.7, "guidance_scale": 4.5},
    "train": {"batch_size": 8, "timesteps_per_forward": 5},
    "advantage": {"normalization": "group"},
})  # fmt: skip
ODE = {"sample": {"sde_window": [0, 0]}}
# task -> method -> (name, config on top of the task's; None: TRL). Learning rates: DDPO and TRL at peer_trl.py's 3e-4;
# the others at the best of sample_efficiency.md / flow_sample_efficiency.md (1e-2, the top of their sweeps), checked
# in smoke runs (1 seed, 4 epochs): at 3e-2 full-SDE PXPO overshot (-0.046 then -0.116) and scalar GRPO got worse than
# the base model, while windowed PXPO (2 of 10 steps trained) went -0.193 at 1e-2 and -0.111 at 3e-2, so it gets 3e-2;
# AWM and pixel-wise AWM: 3e-3 (1e-3 moved them less: -0.432 / -0.462 against -0.329 / -0.368). Tiny PXPO trains
# on all 8 images at once (one optimiser step per epoch, as sample_efficiency.py; at batch 4 it had not improved after
# 2 epochs in the smoke run); DDPO keeps TRL's batch of 4.
AWM_LR = 3e-3
METHODS = {
    "tiny": {
        "pxpo": ("PXPO", {"train": {"algorithm": "pxpo", "learning_rate": 1e-2, "batch_size": 8}}),
        "ddpo": ("pxpo DDPO", {"train": {"algorithm": "ddpo", "learning_rate": 3e-4, "clip_range": 1e-4}}),
        "trl": ("TRL 0.23.1 DDPO", None),
    },
    "flow": {
        "pxpo": ("PXPO, full SDE", {"train": {"algorithm": "pxpo", "learning_rate": 1e-2}}),
        "pxpo_window": ("PXPO, 2-step window", {"train": {"algorithm": "pxpo", "learning_rate": 3e-2, "timesteps_per_forward": 2},
                                                "sample": {"sde_window": [0, 2], "sde_window_schedule": "random"}}),
        "pxawm": ("pixel-wise AWM, ODE", bench.merge(ODE, {"train": {"algorithm": "pxawm", "learning_rate": AWM_LR}})),
        "grpo": ("scalar GRPO", {"train": {"algorithm": "ddpo", "learning_rate": 1e-2}}),
        "awm": ("scalar AWM, ODE", bench.merge(ODE, {"train": {"algorithm": "awm", "learning_rate": AWM_LR}})),
    },
}  # fmt: skip
BASELINE = {"tiny": "trl", "flow": "grpo"}
PIXELWISE = {"tiny": ["pxpo"], "flow": ["pxpo", "pxpo_window", "pxawm"]}


def task_config(args: argparse.Namespace, task: str, seed: int, method: str | None = None, tweaked: bool = True) -> dict:
    """A method's pxpo config: the task's settings, the benchmark's steps/epochs/eval seeds, the method's (None: the
    task's shared settings only) and, when ``tweaked``, its ``--tweak`` changes."""
    common = {"sample": {"num_steps": args.steps[task]}, "eval": {"seeds": list(range(args.eval_seeds))},
              "run": {"num_epochs": args.epochs[task], "seed": seed, "checkpoint_every": 10**6}}  # fmt: skip
    data = bench.merge(bench.merge(TINY if task == "tiny" else FLOW, common), METHODS[task][method][1] if method else {})
    for name, setting in args.tweaks[task] if tweaked else []:
        data = bench.merge(data, setting) if name == method else data
    if args.model.get(task):
        data["model"]["pretrained"] = args.model[task]
    data["train"]["timesteps_per_forward"] = min(data["train"]["timesteps_per_forward"], args.steps[task])  # speed only
    return data


# the child processes --------------------------------------------------------------------------------
class Judge:
    """Scores a LoRA with the task's one evaluation: a pxpo trainer with the baseline's sampler and eval seeds."""

    def __init__(self, args: argparse.Namespace, task: str, seed: int, folder: str) -> None:
        from pxpo.models import load_segmenter

        baseline = "ddpo" if task == "tiny" else "grpo"  # TRL's sampler is pxpo DDPO's
        self.trainer = bench.build_trainer(task_config(args, task, seed, baseline, tweaked=False), folder=folder, name="judge")
        self.segmenter = load_segmenter(args.segmenter)

    def score(self, epoch: int, lora: dict, quality: bool) -> dict:
        """The evaluation reward of the policy with weights ``lora`` (and its quality score when ``quality``)."""
        from pxpo.models import load_trainable_state_dict

        trainer = self.trainer
        load_trainable_state_dict(trainer.accelerator.unwrap_model(trainer.denoiser), lora)
        record = {"eval_reward": trainer.evaluate(epoch)["eval_reward_mean"]}
        if quality:
            record["quality"] = quality_score(self.segmenter, trainer.eval_images(epoch))
        return record


def quality_score(segmenter: tuple, images) -> float:
    """world_quality.py's measure on images [N, 3, H, W]: the mean over FAMILY's key classes of the fraction of images
    in which the bundled segmenter finds the class, in points (0-100)."""
    from pxpo.world.evaluate import segment
    from pxpo.world.scenes import class_presence

    presence = [class_presence(labels, FAMILY) for labels in segment(*segmenter, images)]
    return 100.0 * float(np.mean([[p[c] for c in p] for p in presence]))


def pxpo_child(args: argparse.Namespace) -> None:
    """Train one pxpo method; print one JSON line per epoch (0: the base model): timed seconds, eval reward."""
    from pxpo.models import trainable_state_dict

    with tempfile.TemporaryDirectory() as folder:
        judge = Judge(args, args.task, args.seed, folder)
        trainer = bench.build_trainer(task_config(args, args.task, args.seed, args.method), folder=folder, name="run")
        weights = lambda: trainable_state_dict(trainer.accelerator.unwrap_model(trainer.denoiser))  # noqa: E731
        print_record({"epoch": 0, "seconds": 0.0, **judge.score(0, weights(), quality=True)})
        last = args.epochs[args.task]
        for epoch in range(1, last + 1):
            record = trainer.run_epoch(epoch, evaluate=False)
            seconds = record["sample_seconds"] + record["reward_seconds"] + record["train_seconds"]
            print_record({"epoch": epoch, "seconds": seconds, **judge.score(epoch, weights(), quality=epoch == last)})


def trl_eval_child(args: argparse.Namespace) -> None:
    """Score TRL's saved LoRAs (``--lora-dir``/epoch_N.safetensors) with the judge; one JSON line per epoch."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as folder:
        judge = Judge(args, "tiny", args.seed, folder)
        names = judge.trainer.accelerator.unwrap_model(judge.trainer.denoiser).named_parameters()
        base = {name: p.detach().clone() for name, p in names if p.requires_grad}
        last = args.epochs["tiny"]
        print_record({"epoch": 0, **judge.score(0, base, quality=True)})
        for epoch in range(1, last + 1):
            print_record({"epoch": epoch, **judge.score(epoch, load_file(Path(args.lora_dir) / f"epoch_{epoch}.safetensors"), quality=epoch == last)})


def print_record(record: dict) -> None:
    print("RECORD " + json.dumps(record), flush=True)


# the parent: runs, interleaved ----------------------------------------------------------------------
def run_child(command: list[str]) -> list[dict]:
    """Run a child process; its RECORD lines (pxpo children) or print_epoch lines (TRL's runner)."""
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=bench.ROOT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RECORD ")]
    return records or bench.epoch_lines(done.stdout)


def child_options(args: argparse.Namespace, task: str, seed: int) -> list[str]:
    return ["--tasks", task, "--seeds", str(seed), "--epochs", str(args.epochs[task]), "--steps", str(args.steps[task]),
            "--eval-seeds", str(args.eval_seeds), "--segmenter", args.segmenter,
            *(["--model-" + task, args.model[task]] if args.model.get(task) else []),
            *(["--threads", str(args.threads)] if args.threads else []),
            *(x for t in args.tweak for x in ("--tweak", t))]  # fmt: skip


def run_trl(args: argparse.Namespace, seed: int) -> list[dict]:
    """TRL's DDPO (its timed epochs, LoRA saved after each), then the judge's scores of the saved LoRAs."""
    make_venv = "import sys; sys.path.insert(0, 'benchmarks'); import peer_trl; print(peer_trl.ensure_trl_venv())"
    python = subprocess.run([sys.executable, "-c", make_venv], check=True, capture_output=True, text=True, cwd=bench.ROOT).stdout.split()[-1]
    with tempfile.TemporaryDirectory() as folder:
        from pxpo.world import WEIGHTS

        model = args.model.get("tiny") or str(WEIGHTS / "pxpo-tiny")
        tiny = task_config(args, "tiny", seed, "ddpo", tweaked=False)  # TRL gets pxpo DDPO's numbers
        trl = run_child([python, str(bench.ROOT / "benchmarks" / "trl_runner.py"), "--model", model, "--prompt", PROMPT,
                         "--samples", str(tiny["sample"]["batch_size"]), "--train-batch-size", str(tiny["train"]["batch_size"]),
                         "--steps", str(args.steps["tiny"]), "--epochs", str(args.epochs["tiny"]),
                         "--guidance-scale", str(tiny["sample"]["guidance_scale"]), "--learning-rate", str(tiny["train"]["learning_rate"]),
                         "--seed", str(seed), "--save-lora", folder])  # fmt: skip
        scores = run_child([sys.executable, __file__, "--child", "trl_eval", "--lora-dir", folder, *child_options(args, "tiny", seed)])
    seconds = [0.0] + [e["seconds"] for e in trl]
    return [{**s, "seconds": t} for s, t in zip(scores, seconds)]


def run_method(args: argparse.Namespace, task: str, method: str, seed: int) -> list[dict]:
    """One (method, seed) run: per epoch (0 = base) the cumulative timed seconds, eval reward, reward queries."""
    if method == "trl":
        records = run_trl(args, seed)
    else:
        records = run_child([sys.executable, __file__, "--child", "pxpo", "--method", method, *child_options(args, task, seed)])
    elapsed = np.cumsum([r["seconds"] for r in records]).tolist()
    return [{**r, "elapsed": t, "queries": r["epoch"] * SCENE["sample"]["batch_size"]} for r, t in zip(records, elapsed)]


# analysis ---------------------------------------------------------------------------------------------
def time_to(curve: list[dict], threshold: float, key: str) -> float | None:
    """``key`` (elapsed seconds or reward queries) at which the eval reward first reaches ``threshold``, linearly
    interpolated between the epochs either side; None when it never does."""
    for before, after in zip([None, *curve], curve):
        if after["eval_reward"] >= threshold:
            if before is None:
                return float(after[key])
            part = (threshold - before["eval_reward"]) / (after["eval_reward"] - before["eval_reward"])
            return float(before[key] + part * (after[key] - before[key]))
    return None


def summary(runs: dict[str, list[list[dict]]], baseline: str) -> dict:
    """Per method: final reward, seconds and queries to the baseline's final mean reward (per seed; None: not
    reached), quality at the start and end (per seed), and the threshold."""
    threshold = float(np.mean([curve[-1]["eval_reward"] for curve in runs[baseline]]))
    out = {"threshold": threshold, "methods": {}}
    for method, curves in runs.items():
        out["methods"][method] = {
            "final": [c[-1]["eval_reward"] for c in curves],
            "seconds": [time_to(c, threshold, "elapsed") for c in curves],
            "queries": [time_to(c, threshold, "queries") for c in curves],
            "total_seconds": [c[-1]["elapsed"] for c in curves],
            "quality_base": [c[0]["quality"] for c in curves],
            "quality_end": [c[-1]["quality"] for c in curves],
        }
    return out


def reached(values: list[float | None], digits: int = 1) -> str:
    """mean ± std of the seeds that reached the threshold, with how many did when not all."""
    hit = [v for v in values if v is not None]
    if not hit:
        return "not reached"
    text = bench.pm(hit, digits=digits)
    return text if len(hit) == len(values) else f"{text} ({len(hit)} of {len(values)} seeds)"


def ratio(values: list[float | None], base: list[float | None]) -> float | None:
    """Mean time to threshold over the baseline's (None when either has no seed that reached it)."""
    a, b = [v for v in values if v is not None], [v for v in base if v is not None]
    return float(np.mean(a) / np.mean(b)) if a and b and np.mean(b) > 0 else None


def table_rows(task: str, result: dict) -> list[list[str]]:
    base = result["methods"][BASELINE[task]]
    rows = []
    for method, m in result["methods"].items():
        r = ratio(m["seconds"], base["seconds"])
        drop = [e - b for e, b in zip(m["quality_end"], m["quality_base"])]
        rows.append([METHODS[task][method][0], bench.pm(m["final"], digits=4), reached(m["seconds"]), "-" if r is None else f"{r:.3f}",
                     reached(m["queries"]), bench.pm(m["total_seconds"], digits=1),
                     f"{bench.pm(m['quality_end'], digits=1)} ({bench.pm(drop, digits=1, signed=True)})"])  # fmt: skip
    return rows


def goals(task: str, result: dict) -> list[str]:
    """The issue's goals for ``task``, each with its numbers and met / NOT met."""
    m = result["methods"]
    seconds = {k: v["seconds"] for k, v in m.items()}
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines = []
    if task == "tiny" and "pxpo" in m:
        r = ratio(seconds["pxpo"], seconds["trl"])
        lines.append(f"- PXPO reaches TRL DDPO's final reward in <= 0.25x TRL's time: {'-' if r is None else f'{r:.3f}x'}, {verdict(r is not None and r <= 0.25)}.")
    if task == "flow":
        fast = {k: ratio(seconds[k], seconds["grpo"]) for k in PIXELWISE["flow"] if k in m}
        best = min((k for k in fast if fast[k] is not None), key=fast.get, default=None)
        text = "-" if best is None else f"{METHODS['flow'][best][0]}, {fast[best]:.3f}x"
        lines.append(f"- The fastest pixel-wise method reaches scalar GRPO's final reward in <= 0.2x its time: {text}, {verdict(best is not None and fast[best] <= 0.2)}.")
        if {"pxpo", "pxpo_window"} <= set(m):
            speed = ratio(seconds["pxpo"], seconds["pxpo_window"])
            full, window = bench.mean_std(m["pxpo"]["final"]), bench.mean_std(m["pxpo_window"]["final"])
            ok = speed is not None and speed >= 2 and window[0] >= full[0]
            lines.append(f"- Windowed PXPO >= 2x faster to the threshold than full-SDE PXPO at an equal or better final reward: "
                         f"{'-' if speed is None else f'{speed:.2f}x'} faster, final {bench.plus_minus(*window)} against "
                         f"{bench.plus_minus(*full)}, {verdict(ok)}.")  # fmt: skip
    changes = [e - b for v in m.values() for e, b in zip(v["quality_end"], v["quality_base"])]
    lines.append(f"- World-quality score within 5 points of the base model's at the end of every run: changes from {min(changes):+.1f} "
                 f"to {max(changes):+.1f} points, {verdict(max(map(abs, changes)) <= 5)} (no drop over 5 points: {verdict(min(changes) >= -5)}).")
    return lines


def plot(task: str, runs: dict[str, list[list[dict]]], args: argparse.Namespace, path: Path, threshold: float) -> None:
    """Reward against timed seconds and against reward queries: one curve per method, mean over seeds, band = spread."""
    with bench.figure(path, size=(11, 3.8), ncols=2) as axes:
        for i, (method, curves) in enumerate(runs.items()):
            reward = np.array([[e["eval_reward"] for e in c] for c in curves])
            for ax, key in zip(axes, ("elapsed", "queries")):
                x = np.array([[e[key] for e in c] for c in curves]).mean(axis=0)
                ax.plot(x, reward.mean(axis=0), "-o", ms=3, color=f"C{i}", label=METHODS[task][method][0])
                ax.fill_between(x, reward.min(axis=0), reward.max(axis=0), color=f"C{i}", alpha=0.2)
        for ax, x in zip(axes, ("seconds of training (sampling + reward + update)", "reward queries (images scored)")):
            ax.axhline(threshold, color="grey", ls=":", lw=1)
            bench.label(ax, x=x, y="evaluation reward", title=f"{task}: mean over {len(args.seeds)} seeds (band: min-max)", legend_size=7)


def report(task: str, runs: dict, args: argparse.Namespace, seconds: float) -> None:
    """The task's table, goals, figure and raw results in ``args.out``/time_to_reward_TASK.{md,json,png}."""
    out, stem = Path(args.out), f"time_to_reward_{task}{args.suffix}"
    result = summary(runs, BASELINE[task])
    plot(task, runs, args, out / f"{stem}.png", result["threshold"])
    name = METHODS[task][BASELINE[task]][0]
    lines = [f"## {task}: `{args.model.get(task) or TINY_OR_FLOW[task]}`", "",
             f"Threshold: {name}'s final evaluation reward, mean over seeds: {result['threshold']:.4f}. Times are seconds of "
             f"sampling + reward + update (evaluation not counted), interpolated between epochs; mean ± std over the seeds that reached it.", ""]  # fmt: skip
    lines += bench.table(["method", "final eval reward", "seconds to threshold", f"time / {name}", "reward queries to threshold",
                          "seconds for all epochs", "quality at end (change from base)"], table_rows(task, result))  # fmt: skip
    lines += ["", *goals(task, result), "", settings(task, args), "", f"![{task}]({stem}.png)"]
    bench.write_json(out / f"{stem}.json", {"task": task, **result, "settings": settings(task, args),
                     "runs": {m: dict(zip(map(str, args.seeds), curves)) for m, curves in runs.items()}}, seconds=seconds)  # fmt: skip
    bench.write_markdown(out / f"{stem}.md", lines, seconds=seconds)


TINY_OR_FLOW = {"tiny": TINY["model"]["pretrained"], "flow": FLOW["model"]["pretrained"]}


def settings(task: str, args: argparse.Namespace) -> str:
    """The settings of every method of ``task``, as a sentence and each method's config overrides."""
    base = task_config(args, task, 0)
    text = (f"Settings: {base['sample']['batch_size']} images per epoch, {args.steps[task]} steps, {args.epochs[task]} epochs, "
            f"seeds {', '.join(map(str, args.seeds))}, {args.eval_seeds} evaluation seeds, prompt \"{PROMPT}\", blue penalty; "
            f"shared: `{json.dumps({k: v for k, v in base.items() if k in ('sample', 'train', 'advantage', 'model')})}`. Per method: ")
    methods = [f"{name}: `{json.dumps(extra)}`" if extra is not None else
               f"{name}: trl_runner.py with pxpo DDPO's numbers (per_prompt_stat_tracking off, eta 1, timestep fraction 1)"
               for name, extra in METHODS[task].values()]  # fmt: skip
    changed = [t for t in args.tweak if t.split("=")[0] in METHODS[task]]
    return text + "; ".join(methods) + "." + (f" Changed with --tweak: {', '.join(changed)}." if changed else "")


# command line -------------------------------------------------------------------------------------------
DEFAULTS = {"epochs": {"tiny": 6, "flow": 8}, "steps": {"tiny": 10, "flow": 10}}


def parse_arguments() -> argparse.Namespace:
    parser = bench.arguments(__doc__, seeds=[0, 1, 2], out="docs/benchmarks", out_help="folder for time_to_reward_*.md, .json, .png")
    parser.add_argument("--tasks", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--methods", nargs="+", help="run only these methods (keys of METHODS; the baseline always runs)")
    parser.add_argument("--epochs", type=int, help=f"epochs per run (default: {DEFAULTS['epochs']})")
    parser.add_argument("--steps", type=int, help=f"denoising steps (default: {DEFAULTS['steps']})")
    parser.add_argument("--eval-seeds", type=int, default=16, help="evaluation images (seeds 0..N-1)")
    parser.add_argument("--model-tiny", help="pipeline of the tiny task (default: the bundled pxpo-tiny)")
    parser.add_argument("--model-flow", help="pipeline of the flow task (default: the bundled pxpo-tiny-flow)")
    parser.add_argument("--suffix", default="", help="added to the result files' names: time_to_reward_TASK{SUFFIX}.md")
    parser.add_argument("--segmenter", default="pxpo-tiny-seg", help="the quality score's segmenter")
    parser.add_argument("--tweak", action="append", default=[], metavar="METHOD=SECTION.KEY=VALUE",
                        help="a config change of one method (VALUE read as JSON), e.g. pxawm=train.learning_rate=1e-3")
    parser.add_argument("--child", choices=["pxpo", "trl_eval"], help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--lora-dir", help=argparse.SUPPRESS)
    args = bench.parse(parser)
    args.epochs = {t: args.epochs or d for t, d in DEFAULTS["epochs"].items()}
    args.steps = {t: args.steps or d for t, d in DEFAULTS["steps"].items()}
    args.model = {"tiny": args.model_tiny, "flow": args.model_flow}
    args.task, args.seed = args.tasks[0], args.seeds[0]
    args.tweaks = {task: [tweak(t) for t in args.tweak if t.split("=")[0] in METHODS[task]] for task in METHODS}
    return args


def tweak(text: str) -> tuple[str, dict]:
    """``METHOD=SECTION.KEY=VALUE`` as (method, {section: {key: value}})."""
    method, key, value = text.split("=", 2)
    section, name = key.split(".")
    return method, {section: {name: json.loads(value)}}


def main() -> None:
    args = parse_arguments()
    if args.child:
        return (pxpo_child if args.child == "pxpo" else trl_eval_child)(args)
    for task in args.tasks:
        start = bench.elapsed()
        methods = [m for m in METHODS[task] if not args.methods or m in args.methods or m == BASELINE[task]]
        runs: dict[str, list[list[dict]]] = {m: [] for m in methods}
        for seed in args.seeds:  # interleaved: seed 0 of every method, then seed 1, ...
            for method in methods:
                runs[method].append(run_method(args, task, method, seed))
                curve = runs[method][-1]
                print(task, method, seed, f"final {curve[-1]['eval_reward']:.4f} after {curve[-1]['elapsed']:.1f} s", flush=True)
        report(task, runs, args, bench.elapsed() - start)


if __name__ == "__main__":
    main()
