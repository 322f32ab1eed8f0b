"""Does feedback stay where it was given? Reward gain against the change outside the judged region.

Three tasks on each bundled model, for PXPO without and with preservation (``train.preserve_coef``, to the base
policy and to the sampling policy, several coefficients), with the LoRA acting only where the reward judges the image
(``train.regional_adapter``, --regional), with late step windows (--late), and the scalar baseline (DDPO; GRPO with
groups):

- painted: the app's session (single image, ``pxpo.app.sessions.session_config``); the simulated annotator paints
  +2 on trees and -2 on water of the shown image, --painted-steps steps. Per step: mean |pixel change| (RGB in
  [0, 1]) between the shown images before and after, inside the painted pixels and outside them.
- hair: the paper's hair removal (configs/hair_removal.toml, flow_hair_removal.toml), --epochs epochs. Gain: the
  evaluation reward's change; outside: mean |pixel change| (0-255) of the evaluation images on the pixels the
  segmenter does not call hair in epoch 0's images.
- class: minus blue on the water of "nature landscape" only (``colour_channel`` with ``classes = ["water"]``). Gain:
  the evaluation reward's change; change on epoch 0's water pixels and on the rest; retention: the share of epoch 0's
  water pixels that are still water at the end.

Writes OUT.md, OUT.json and OUT.png (gain against outside change, one curve per method). Every task runs
``train.num_inner_epochs = 2`` so that a trust region to the sampling policy can bind (it is zero on an epoch's
first, on-policy optimiser step).

    python benchmarks/locality.py [--models pxpo-tiny pxpo-tiny-flow] [--tasks painted hair class] [--seeds 0 1 2]
    python benchmarks/locality.py --tasks painted --base-coefs --sampling-coefs --regional 0.01 0.03   (the app's default)
"""

from __future__ import annotations

import _common as bench

import tempfile
from pathlib import Path

import numpy as np
import torch

from measures import context_change, read_image, segment
from pxpo.app.sessions import session_config
from pxpo.hooks import Callback

CONFIGS = {"pxpo-tiny": {"hair": "configs/hair_removal.toml", "class": "configs/blue_penalty.toml"},
           "pxpo-tiny-flow": {"hair": "configs/flow_hair_removal.toml", "class": "configs/flow_blue_penalty.toml"}}  # fmt: skip
CLASS_TASK = ["sample.prompts=['nature landscape']", "reward.name='colour_channel'",
              "reward.kwargs={channel = 'blue', sign = -1.0, classes = ['water']}"]  # fmt: skip


def methods(base_coefs: list[float], sampling_coefs: list[float], inner_epochs: list[int], late: list[float], steps: int,
            late_preserve: float | None = None, regional: list[float] = (), regional_kl: list[float] = (),
            single_image: bool = False) -> dict[str, list[str]]:  # fmt: skip
    """Method label -> config overrides (``steps``: the task's denoising steps, for the late windows; ``regional``: the
    regional adapter at these learning rates, with ``regional_kl`` KL coefficients too, and on the ``late`` windows (for a
    single image, the painted task, on the last half of the steps when no window is given))."""
    out = {"scalar": ["train.algorithm='ddpo'"], "pxpo": []}
    out |= {f"base {c:g}": [f"train.preserve_coef={c}", "train.preserve_reference='base'"] for c in base_coefs}
    out |= {f"sampling {c:g}": [f"train.preserve_coef={c}", "train.preserve_reference='sampling'"] for c in sampling_coefs}
    out |= {f"pxpo, {n} inner epochs": [f"train.num_inner_epochs={n}"] for n in inner_epochs}  # the other levers tried
    windows = {}
    for fraction in late:  # the LoRA acts on, and is trained on, the last steps only
        length = max(1, round(steps * fraction))  # the window's steps, all in one denoiser call (the same gradient)
        window = windows[fraction] = [f"train.step_window=[{steps - length}, {steps}]", f"train.timesteps_per_forward={length}"]
        out[f"pxpo, last {fraction:.0%} of steps"] = window
        if late_preserve:
            out[f"pxpo, last {fraction:.0%}, base {late_preserve:g}"] = [*window, f"train.preserve_coef={late_preserve}", "train.preserve_reference='base'"]
    for lr in regional:  # the LoRA acts only where judged (the app's default: on the last half, lr 3e-2)
        adapter = ["train.regional_adapter=true", f"train.learning_rate={lr}"]
        out[f"pxpo, regional, lr {lr:g}"] = adapter
        out |= {f"pxpo, regional, lr {lr:g}, kl {c:g}": [*adapter, f"train.kl_coef={c}"] for c in regional_kl}
        if single_image and not windows:
            windows = {0.5: [f"train.step_window=[{steps // 2}, {steps}]", f"train.timesteps_per_forward={steps - steps // 2}"]}
        out |= {f"pxpo, regional, last {fraction:.0%}, lr {lr:g}": [*adapter, *window] for fraction, window in windows.items()}
    return out


class JudgedMaps(Callback):
    """Keeps each epoch's judged map (what the reward had an opinion on)."""

    def __init__(self) -> None:
        self.judged: dict[int, np.ndarray] = {}

    def on_phase_end(self, trainer, phase: str, epoch: int, result) -> None:
        if phase == "reward" and result.judged is not None:
            self.judged[epoch] = result.judged[0].cpu().numpy()


def painted(model: str, seed: int, overrides: list[str], folder: Path, steps: int) -> dict:
    """Inside / outside change per painted step of an app session, averaged over the steps."""
    config = session_config(model, "nature landscape", seed, folder / "s", timesteps_per_forward=20, regional=False)  # methods add theirs
    maps = JudgedMaps()
    trainer = bench.build_trainer(config, ["reward.name='simulated_annotator'", *overrides], callbacks=[maps])
    trainer.begin()
    inside, outside = [], []
    for step in range(steps):
        trainer.step(step + 1)
        before, after = (read_image(trainer.run.eval_image_path(e, seed)) / 255 for e in (step, step + 1))
        change, judged = np.abs(after - before).mean(axis=2), maps.judged[step + 1]
        inside.append(float(change[judged].mean()) if judged.any() else float("nan"))
        outside.append(float(change[~judged].mean()))
    return {"gain": float(np.nanmean(inside)), "inside": float(np.nanmean(inside)), "outside": float(np.mean(outside))}


def trained(model: str, task: str, seed: int, overrides: list[str], folder: Path, epochs: int, eval_seeds: int) -> tuple:
    extra = CLASS_TASK if task == "class" else []
    run = [f"run.seed={seed}", f"run.num_epochs={epochs}", f"run.checkpoint_every={epochs}", "train.num_inner_epochs=2",
           f"eval.seeds={list(range(100, 100 + eval_seeds))}"]  # fmt: skip
    trainer = bench.build_trainer(CONFIGS[model][task], [*extra, *run, *overrides], folder=folder, name=f"{task}-{seed}")
    metrics = trainer.train()
    return trainer, metrics[-1]["eval_reward_mean"] - metrics[0]["eval_reward_mean"]


def hair(model: str, seed: int, overrides: list[str], folder: Path, epochs: int, eval_seeds: int) -> dict:
    trainer, gain = trained(model, "hair", seed, overrides, folder, epochs, eval_seeds)
    return {"gain": gain, "outside": context_change(trainer, ["hair"], epochs)}


def one_class(model: str, seed: int, overrides: list[str], folder: Path, epochs: int, eval_seeds: int) -> dict:
    trainer, gain = trained(model, "class", seed, overrides, folder, epochs, eval_seeds)
    seeds = trainer.config.eval.seeds
    first, last = (np.stack([read_image(trainer.run.eval_image_path(e, s)) for s in seeds]) for e in (0, epochs))
    water_first, water_last = (segment(images) == "water" for images in (first, last))
    change = np.abs(last - first).mean(axis=-1)
    return {
        "gain": gain,
        "inside": float(change[water_first].mean()),
        "outside": float(change[~water_first].mean()),
        "retention": float((water_last & water_first).sum() / max(water_first.sum(), 1)),
    }


def method_rank(method: str) -> tuple:
    """Reports list scalar, PXPO, base and sampling preservation by coefficient, then the other levers."""
    kind, _, rest = method.partition(" ")
    order = {"scalar": 0, "pxpo": 1, "base": 2, "sampling": 3}.get(kind, 4)
    try:
        return order, float(rest), method
    except ValueError:
        return order, 0.0, method


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (model, task, method)."""
    keys = sorted({(r["model"], r["task"], r["method"]) for r in rows}, key=lambda k: (k[0], k[1], method_rank(k[2])))
    out = []
    for model, task, method in keys:
        runs = [r for r in rows if (r["model"], r["task"], r["method"]) == (model, task, method)]
        entry = {"model": model, "task": task, "method": method, "seeds": len(runs)}
        for key in ("gain", "inside", "outside", "retention"):
            if key in runs[0]:
                entry[key] = bench.mean_std(r[key] for r in runs)
        if "inside" in runs[0]:
            entry["ratio"] = bench.mean_std(r["inside"] / r["outside"] for r in runs)
        out.append(entry)
    return out


def report(summary: list[dict], args, sources: list[str]) -> list[str]:
    lines = ["# Locality: does feedback stay where it was given?", "",
             f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), mean ± std. Methods: scalar (DDPO/GRPO), PXPO, PXPO with "
             "`train.preserve_coef` c to the base policy ('base c') or to the sampling policy ('sampling c'), PXPO with the LoRA on the "
             "last steps only (`train.step_window`), PXPO with the LoRA acting only where the reward judges the image "
             "(`train.regional_adapter`, 'regional'). What each task measures: the docstring of benchmarks/locality.py. The runs "
             "(settings in their command lines):", "", *(f"- `{command}`" for command in sources), ""]  # fmt: skip
    for model in args.models:
        for task in args.tasks:
            entries = [e for e in summary if e["model"] == model and e["task"] == task]
            if not entries:
                continue
            lines += [f"## {task}, {model}", ""]
            header = {"painted": ["method", "change inside", "change outside", "inside / outside"],
                      "hair": ["method", "reward gain", "context change (0-255)"],
                      "class": ["method", "reward gain", "water change (0-255)", "rest change (0-255)", "water / rest", "water kept"]}[task]  # fmt: skip
            cells = {"painted": ("inside", "outside", "ratio"), "hair": ("gain", "outside"), "class": ("gain", "inside", "outside", "ratio", "retention")}[task]
            lines += bench.table(header, [[e["method"], *(bench.plus_minus(*e[c], digits=4 if c == "gain" else 3) for c in cells)] for e in entries])
            lines.append("")
    return lines


def plot(summary: list[dict], args) -> None:
    """One panel per (model, task): gain against outside change; a line per preservation reference from PXPO (coefficient
    0) through its coefficients, and the scalar baseline."""
    import matplotlib.pyplot as plt

    from pxpo.plots import save_figure

    fig, axes = plt.subplots(len(args.models), len(args.tasks), figsize=(4.4 * len(args.tasks), 3.8 * len(args.models)), squeeze=False)
    for row, model in enumerate(args.models):
        for column, task in enumerate(args.tasks):
            ax, entries = axes[row][column], [e for e in summary if e["model"] == model and e["task"] == task]
            if not entries:
                ax.axis("off")
                continue
            for family, colour in (("base", "tab:blue"), ("sampling", "tab:orange")):
                line = [e for e in entries if e["method"] == "pxpo" or e["method"].startswith(family)]
                ax.errorbar([e["outside"][0] for e in line], [e["gain"][0] for e in line], xerr=[e["outside"][1] for e in line],
                            yerr=[e["gain"][1] for e in line], marker="o", color=colour, label=f"PXPO, preserve to {family} (c = 0 ...)")  # fmt: skip
                for e in line:
                    ax.annotate(e["method"].split()[-1] if e["method"] != "pxpo" else "0", (e["outside"][0], e["gain"][0]), fontsize=7)
            for e in (e for e in entries if e["method"] == "scalar"):
                ax.errorbar(e["outside"][0], e["gain"][0], xerr=e["outside"][1], yerr=e["gain"][1], marker="s", color="black", label="scalar")
            for e in (e for e in entries if e["method"].startswith("pxpo, ")):  # other levers; the regional adapter in green
                colour = "tab:green" if "regional" in e["method"] else "grey"
                ax.errorbar(e["outside"][0], e["gain"][0], xerr=e["outside"][1], yerr=e["gain"][1], marker="^", color=colour)
                ax.annotate(e["method"].removeprefix("pxpo, "), (e["outside"][0], e["gain"][0]), fontsize=7, color=colour)
            unit = "RGB in [0, 1]" if task == "painted" else "0-255"
            gain = "change inside the painted pixels" if task == "painted" else "reward gain"
            bench.label(ax, x=f"change outside the judged pixels ({unit})", y=gain, title=f"{task}, {model}", legend_size=7)
    fig.suptitle(f"locality: mean ± std over {len(args.seeds)} seeds; numbers: preserve_coef")
    fig.tight_layout()
    save_figure(fig, Path(args.out).with_suffix(".png"))


def main() -> None:
    parser = bench.arguments(__doc__, seeds=[0, 1, 2], overrides=True, out="docs/benchmarks/locality", out_help="output path without suffix")
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--tasks", nargs="+", default=["painted", "hair", "class"], choices=["painted", "hair", "class"])
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the hair and class tasks")
    parser.add_argument("--painted-steps", type=int, default=2, help="painted steps per session")
    parser.add_argument("--eval-seeds", type=int, default=8, help="evaluation images per run")
    parser.add_argument("--base-coefs", type=float, nargs="*", default=[0.1, 1.0, 10.0])
    parser.add_argument("--sampling-coefs", type=float, nargs="*", default=[1.0, 10.0, 100.0])
    parser.add_argument("--inner-epochs", type=int, nargs="*", default=[], help="also PXPO without preservation at these inner epochs")
    parser.add_argument("--late", type=float, nargs="*", default=[], help="also PXPO with the LoRA on the last FRACTION of the steps only")
    parser.add_argument("--late-preserve", type=float, help="also each late window with preserve_coef C to the base")
    parser.add_argument("--regional", type=float, nargs="*", default=[], help="also the regional adapter at these learning rates")
    parser.add_argument("--regional-kl", type=float, nargs="*", default=[], help="also the regional adapter with these kl_coef values")
    parser.add_argument("--only", nargs="+", metavar="PREFIX", help="run only the methods whose label starts with one of these")
    parser.add_argument("--rows", nargs="+", metavar="JSON", help="report the rows of earlier runs' OUT.json / OUT.rows.json files instead of running")
    args = bench.parse(parser)

    rows = [] if not args.rows else list({(r["model"], r["task"], r["method"], r["seed"]): r for path in args.rows  # once each
                                          for r in bench.read_json(path)["rows"]}.values())  # fmt: skip
    sources = [bench.read_json(path).get("command", str(path)) for path in args.rows] if args.rows else [bench.command()]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models if not args.rows else ():
            for task in args.tasks:
                base = session_config(model, "nature landscape", 0, Path(tmp) / "probe", regional=False) if task == "painted" else CONFIGS[model][task]
                steps = bench.load_config(base, args.overrides).sample.num_steps  # the task's steps, for the late windows
                chosen = methods(args.base_coefs, args.sampling_coefs, args.inner_epochs, args.late, steps, args.late_preserve,
                                 args.regional, args.regional_kl, single_image=task == "painted")  # fmt: skip
                if args.only:
                    chosen = {label: o for label, o in chosen.items() if label.startswith(tuple(args.only))}
                for order, (method, overrides) in enumerate(chosen.items()):
                    for seed in args.seeds:
                        start = bench.elapsed()
                        folder = Path(tmp) / f"{model}-{task}-{order}-{seed}"
                        if task == "painted":
                            result = painted(model, seed, [*args.overrides, *overrides], folder, args.painted_steps)
                        else:
                            run = hair if task == "hair" else one_class
                            result = run(model, seed, [*args.overrides, *overrides], folder, args.epochs, args.eval_seeds)
                        rows.append({"model": model, "task": task, "method": method, "seed": seed, "order": order, **result,
                                     "seconds": bench.elapsed() - start})  # fmt: skip
                        bench.write_json(Path(args.out).with_suffix(".rows.json"), {"rows": rows})  # what a cut-off run keeps
                        print(model, task, method, seed, {k: round(v, 4) for k, v in rows[-1].items() if isinstance(v, float)}, flush=True)
    args.models = [m for m in args.models if any(r["model"] == m for r in rows)]
    args.seeds = sorted({r["seed"] for r in rows})
    summary = summarise(rows)
    seconds = sum(r.get("seconds", 0.0) for r in rows)
    bench.write_markdown(Path(args.out).with_suffix(".md"), report(summary, args, sources), seconds=seconds)
    bench.write_json(Path(args.out).with_suffix(".json"), {"args": vars(args), "sources": sources, "summary": summary, "rows": rows}, seconds=seconds)
    plot(summary, args)


if __name__ == "__main__":
    main()
