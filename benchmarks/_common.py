"""The harness of the benchmark scripts: shared options, trainers from config dicts, result files, formatting.

A script imports it before anything that imports torch (it sets ``OMP_WAIT_POLICY=PASSIVE``, which the OpenMP
runtime reads once, when torch loads: waiting threads then sleep instead of spinning on a shared machine)::

    import _common as bench   # first

    parser = bench.arguments(__doc__, seeds=[0, 1, 2], out="docs/benchmarks/x", overrides=True)
    args = bench.parse(parser)                                  # --threads applied
    trainer = bench.build_trainer({...}, args.overrides, folder=tmp, name="run")
    bench.write_markdown(path, lines)                           # + the command line and the wall time
    bench.write_json(path, {"runs": [...]})                     # + "command", "seconds", "machine"

Everything written goes through pxpo.io's atomic writers (a killed benchmark never leaves half a report).
Its top level imports the standard library only: ``trl_runner.py`` uses it from TRL's venv, where pxpo is
not installed. Scripts import it, never each other.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is loaded (by the script or by pxpo)
os.environ.setdefault("MPLBACKEND", "Agg")  # figures are files: no display needed

if TYPE_CHECKING:
    from pxpo.config import Config
    from pxpo.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
STARTED = time.perf_counter()  # this process's benchmark began (the harness is imported first)


# command line ------------------------------------------------------------------------------------
def arguments(doc: str, *, seeds: Sequence[int] | None = None, out: str | None = None, out_help: str = "where the results go",
              out_flags: Sequence[str] = ("--out",), overrides: bool = False) -> argparse.ArgumentParser:  # fmt: skip
    """A parser described by the first paragraph of ``doc``, with the shared options asked for.

    ``--threads`` always (torch's intra-op threads; default: torch's choice); ``--seeds`` (or ``--seed``: the seeds
    to run, default ``seeds``) when ``seeds`` is given; ``--out`` (default ``out``; other spellings in ``out_flags``) when ``out``
    is given; ``--set`` (repeatable config overrides ``section.key=value``, into ``args.overrides``) when ``overrides``.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if seeds is not None:
        parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=list(seeds), help="seeds (each run's run.seed, or the image's)")
    if out is not None:
        parser.add_argument(*out_flags, dest="out", default=out, help=out_help)
    if overrides:
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                            help="a config override on every run (repeatable)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line and apply the thread setting."""
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args


def command() -> str:
    """This process's command line, as it would be typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    name = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script.name
    return shlex.join(["python", str(name), *sys.argv[1:]])


def elapsed(since: float = STARTED) -> float:
    """Seconds of wall time since ``since`` (default: since the benchmark began)."""
    return time.perf_counter() - since


def machine() -> str:
    """What the numbers were measured on: the GPU's name, or the CPU's core count."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"


def stamp(seconds: float | None = None) -> dict:
    """The provenance every result carries: the command line, its wall time in seconds and the machine."""
    return {"command": command(), "seconds": round(elapsed() if seconds is None else seconds, 3), "machine": machine()}


def footer(seconds: float | None = None) -> str:
    """The provenance line of a markdown report."""
    s = stamp(seconds)
    return f"Command: `{s['command']}`; {s['seconds'] / 60:.1f} minutes on {s['machine']}."


# trainers ---------------------------------------------------------------------------------------
def merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, nested dicts merged key by key (neither is changed)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(source: dict | Config | str | Path, overrides: Sequence[str] = ()) -> Config:
    """A validated config from a raw dict, a TOML file or a Config (what it was given, not its defaults), with
    ``overrides`` (``section.key=value``, the value read as TOML) applied."""
    from pxpo.config import Config, apply_overrides, load_config as load_toml, validate_config

    if isinstance(source, (str, Path)):
        return load_toml(source, list(overrides))
    data = source.model_dump(mode="json", exclude_unset=True) if isinstance(source, Config) else source
    return validate_config(apply_overrides(data, list(overrides)))


def build_trainer(source: dict | Config | str | Path, overrides: Sequence[str] = (), *, folder: str | Path | None = None,
                  name: str | None = None, **kwargs: Any) -> Trainer:  # fmt: skip
    """A Trainer without progress bars from ``load_config(source, overrides)``; its run folder is ``folder/name``
    where given (after the overrides: a benchmark's runs go where it says). ``kwargs`` go to Trainer."""
    from pxpo.trainer import Trainer

    run = {"output_dir": folder, "name": name}
    placed = [f"run.{key}={json.dumps(str(value))}" for key, value in run.items() if value is not None]  # TOML strings
    return Trainer(load_config(source, [*overrides, *placed]), **{"progress": False, **kwargs})


# numbers ----------------------------------------------------------------------------------------
def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation."""
    import numpy as np

    array = np.asarray(list(values), dtype=float)
    return float(array.mean()), float(array.std())


def plus_minus(mean: float, std: float, digits: int = 4, signed: bool = False) -> str:
    """``mean ± std``, e.g. ``+0.390 ± 0.014`` with ``digits=3, signed=True``."""
    return f"{mean:{'+' if signed else ''}.{digits}f} ± {std:.{digits}f}"


def pm(values: Iterable[float], digits: int = 4, signed: bool = False) -> str:
    """``mean ± std`` of ``values``."""
    return plus_minus(*mean_std(values), digits=digits, signed=signed)


def span(values: Iterable[float], fmt: str = "{:.2f}") -> str:
    """``low-high`` of ``values`` at format ``fmt`` (one number when both read the same)."""
    values = list(values)
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}-{high}"


# reports ----------------------------------------------------------------------------------------
def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header), *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def write_markdown(path: str | Path | None, lines: Sequence[str] | str, *, seconds: float | None = None, provenance: bool = True,
                   echo: bool = True) -> str:  # fmt: skip
    """Write a markdown report ending in its provenance line (command, wall time, machine; left out where the
    report's parts carry their own), print it when ``echo``; return its text. ``path`` None: print only."""
    from pxpo.io import atomic_write_text

    text = (lines if isinstance(lines, str) else "\n".join(lines)).rstrip("\n") + "\n"
    if provenance:
        text += "\n" + footer(seconds) + "\n"
    if path is not None:
        atomic_write_text(path, text)
    if echo:
        print(text, flush=True)
    return text


def collate(path: str | Path, header: Sequence[str], parts: Sequence[str | Path]) -> None:
    """A report made of other reports (each with its own provenance line): ``header``, then each part that exists."""
    sections = [Path(p).read_text() for p in parts if Path(p).exists()]
    write_markdown(path, [*header, "", *sections], provenance=False, echo=False)


def write_json(path: str | Path, value: dict, *, seconds: float | None = None) -> dict:
    """Write ``value`` as JSON with its provenance (``command``, ``seconds``, ``machine``) first; return what was written."""
    from pxpo.io import atomic_write_json

    result = {**stamp(seconds), **value}
    atomic_write_json(path, result)
    return result


def store_json(path: str | Path, key: str, value: dict, *, seconds: float | None = None) -> dict:
    """Put ``value`` (with its provenance) under ``key`` of the JSON store at ``path`` (kept across invocations,
    so that parts of a benchmark can run in separate processes); return the whole store."""
    from pxpo.io import atomic_write_json

    store = read_json(path)
    store[key] = {**stamp(seconds), **value}
    atomic_write_json(path, store)
    return store


def read_json(path: str | Path) -> dict:
    """A JSON store's contents ({} when there is none yet)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


@contextmanager
def figure(path: str | Path, size: tuple[float, float] = (6, 3.6), ncols: int = 1) -> Iterator[Any]:
    """Yield a figure's axes (one, or ``ncols`` side by side); the figure is saved to ``path`` (PNG, atomically)
    when the block ends, and closed either way."""
    import matplotlib.pyplot as plt

    from pxpo.plots import save_figure

    fig, axes = plt.subplots(1, ncols, figsize=size)
    try:
        yield axes
    except BaseException:
        plt.close(fig)
        raise
    save_figure(fig, path)


def label(ax: Any, *, x: str, y: str, title: str, legend_size: float | None = None) -> None:
    """Axis labels, title, a light grid and the legend."""
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


# the sample-efficiency benchmarks ---------------------------------------------------------------
# Tasks on the bundled world: each a config (without model and run) and the classes its reward targets
# (the context change is measured on the other pixels).
TASKS = {
    "blue": {
        "config": {"sample": {"prompts": ["red taxi in traffic"], "batch_size": 8}, "train": {"batch_size": 8},
                   "reward": {"name": "blue_penalty"}, "eval": {"seeds": list(range(8))}},
        "targeted": [],  # every pixel is rewarded: the context is the whole image
    },
    "hair": {
        "config": {"sample": {"prompts": ["portrait of a man on the beach"], "batch_size": 8}, "train": {"batch_size": 8},
                   "reward": {"name": "segmentation", "kwargs": {"classes": {"hair": -1.0}}}, "eval": {"seeds": list(range(8))}},
        "targeted": ["hair", "hat"],
    },
    "two": {  # as configs/human_sim_*.toml
        "config": {"sample": {"prompts": ["nature landscape"], "batch_size": 1, "single_image_seed": 0, "single_image_noise": "fresh", "eta": 0.3},
                   "train": {"batch_size": 1, "num_inner_epochs": 2}, "advantage": {"normalization": "none"},
                   "reward": {"name": "simulated_annotator", "kwargs": {"increase": ["tree"], "decrease": ["water"]}}, "eval": {}},
        "targeted": ["tree", "water"],
    },
}  # fmt: skip


def sweep_arguments(doc: str, *, tasks: Sequence[str], model: str, epochs: int | None, prefix: str) -> argparse.ArgumentParser:
    """The options of the sample-efficiency benchmarks: the shared ones (``--seeds``, ``--set``, ``--out``) and the sweep's."""
    parser = arguments(doc, seeds=[0, 1, 2], overrides=True, out="docs/benchmarks", out_help=f"folder for {prefix}*.md, .json and .png")
    parser.add_argument("--tasks", nargs="+", default=list(tasks), choices=list(tasks))
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="the learning rates swept")
    parser.add_argument("--epochs", type=int, default=epochs, help="epochs per run" + ("" if epochs else " (default: the task's)"))
    parser.add_argument("--num-steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--timesteps-per-forward", type=int, default=5, help="train.timesteps_per_forward (speed only)")
    parser.add_argument("--model", default=model)
    return parser


def run_task(task: str, args: argparse.Namespace, folder: str | Path, *, method: str, lr: float, seed: int, epochs: int,
             extra: dict | None = None, tag: str = "") -> dict:  # fmt: skip
    """Train one run of ``task`` with the sweep's settings (``sweep_arguments``), ``extra`` config and ``args.overrides``
    to the end: the evaluation reward against reward queries, the KL it logged, the context change
    (``measures.context_change``) and its seconds."""
    from measures import context_change

    start = time.perf_counter()
    data = merge(merge(TASKS[task]["config"], {
        "model": {"pretrained": args.model},
        "sample": {"num_steps": args.num_steps},
        "train": {"algorithm": method, "learning_rate": lr, "timesteps_per_forward": min(args.timesteps_per_forward, args.num_steps)},
        "run": {"num_epochs": epochs, "seed": seed, "checkpoint_every": 10**6},
    }), extra or {})  # fmt: skip
    trainer = build_trainer(data, args.overrides, folder=folder, name="-".join([task, method, f"{lr:g}", *filter(None, [tag]), str(seed)]))
    metrics = trainer.train()
    per_epoch = trainer.config.sample.batch_size * trainer.config.sample.num_batches_per_epoch
    return {
        "queries": [m["epoch"] * per_epoch for m in metrics],
        "reward": [m["eval_reward_mean"] for m in metrics],
        "kl": [m.get("kl", 0.0) for m in metrics[1:]],
        "context": context_change(trainer, TASKS[task]["targeted"], metrics[-1]["epoch"]),
        "seconds": elapsed(start),
    }


def write_task(out: Path, prefix: str, task: str, raw: list[dict], lines: list[str], seconds: float) -> None:
    """A task's results: every run in ``OUT/PREFIX_TASK.json`` (to re-read) and the report ``OUT/PREFIX_TASK.md``."""
    write_json(out / f"{prefix}_{task}.json", {"task": task, "runs": raw}, seconds=seconds)
    write_markdown(out / f"{prefix}_{task}.md", lines, seconds=seconds)


def improvements(runs: Sequence[dict]) -> Any:
    """Each run's evaluation reward minus its start, [runs, budgets] (numpy)."""
    import numpy as np

    return np.array([np.array(r["reward"]) - r["reward"][0] for r in runs])


def final_improvement(runs: Sequence[dict]) -> float:
    """The mean over runs (seeds) of the improvement after the whole budget."""
    return float(improvements(runs)[:, -1].mean())


def sweep_cell(runs: Sequence[dict]) -> str:
    """A sweep table's cell: final improvement, mean ± std over seeds, and the mean context change in brackets."""
    return f"{pm(improvements(runs)[:, -1], digits=4, signed=True)} ({mean_std(r['context'] for r in runs)[0]:.1f})"


# child processes --------------------------------------------------------------------------------
def print_epoch(epoch: int, seconds: float) -> None:
    """One epoch's time and the process's peak resident memory, as a JSON line (read back by ``epoch_lines``)."""
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"epoch": epoch, "seconds": seconds, "peak_rss_mb": peak_mb}), flush=True)


def epoch_lines(stdout: str) -> list[dict]:
    """The ``print_epoch`` records in a child process's output."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"epoch"')]
