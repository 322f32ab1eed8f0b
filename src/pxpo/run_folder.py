"""The run folder: what a training run leaves for people and for resuming.

    RUN/
      config.toml          the resolved config
      metrics.jsonl        one JSON line per epoch (epoch 0: the base model's evaluation)
      reward_curve.png     training and evaluation reward per epoch
      evolution.png        fixed-seed samples (rows) across epochs (columns)
      eval/epoch_0003/seed_0000.png ...
      lora/                pytorch_lora_weights.safetensors (``pipe.load_lora_weights(RUN / "lora")``)
      unet/ or transformer/ the fine-tuned denoiser, when not training LoRA
      checkpoints/epoch_0005/{trainable.safetensors, optimizer.safetensors, state.json[, ema.safetensors]}

Every file is written atomically; checkpoints hold safetensors and JSON only (no pickles).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pxpo.config import ConfigError, load_config
from pxpo.images import to_pil
from pxpo.io import atomic_directory, atomic_write_text, is_leftover, save_image

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from pxpo.config import Config
    from pxpo.families import ModelFamily

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "epoch_"
LOCK_NAME = ".lock"
Tensors = dict[str, torch.Tensor]  # named tensors, as safetensors stores them
CHECKPOINT_TENSORS = ("trainable", "optimizer")  # a checkpoint's own files; the others are its extra tensors
_HELD: dict[Path, object] = {}  # run folders this process holds the lock of (open lock files)


class RunFolderBusy(ValueError):
    """Another process is writing the run folder."""


def flatten_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as named tensors (for safetensors) and its param groups (for JSON)."""
    state_dict = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": torch.as_tensor(value).detach().clone().contiguous()
        for index, values in state_dict["state"].items()
        for name, value in values.items()
    }
    return tensors, state_dict["param_groups"]


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    """Inverse of ``flatten_optimizer_state``: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": param_groups}


class RunFolder:
    """One run folder: its paths, readers and writers, and its lifecycle (open, lock, resume, checkpoints, weights)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.toml"
        self.metrics = self.path / "metrics.jsonl"
        self.reward_curve = self.path / "reward_curve.png"
        self.evolution = self.path / "evolution.png"
        self.eval_dir = self.path / "eval"
        self.lora = self.path / "lora"
        self.checkpoints = self.path / "checkpoints"

    @classmethod
    def open(cls, path: str | Path, resume: bool, is_main: bool) -> RunFolder:
        """The folder of a new run (absent or empty) or of one to resume (it has a config.toml), locked by the main
        process before anything is written. A start that failed before its first checkpoint is cleared for a re-run."""
        run = cls(path)
        if resume:
            if not run.config.exists():
                raise ConfigError(f"cannot resume {str(run.path)!r}: it has no config.toml (not a run folder)")
            if is_main:
                run.lock()  # one writer per run folder, from here until this process ends
            return run
        if is_main:
            run.lock()  # before looking inside: a run starting at the same moment cannot slip in between
            if not run.is_empty() and not run.list_checkpoints() and run.config.exists() and not run.lora.exists():
                logger.warning("%s holds a start that failed before its first checkpoint: starting afresh", run.path)
                run.clear()
        if not run.is_empty():
            raise ConfigError(f"run folder {str(run.path)!r} already exists and is not empty: choose another run.name or --resume it")
        return run

    def resume(self, restore: Callable[[Tensors, dict, dict, dict[str, Tensors]], None], is_main: bool) -> int:
        """Repair what a crash left, then ``restore(trainable, optimizer_state, state, extra)`` from the newest intact
        checkpoint (a damaged one is skipped, saying so; ``extra``: ``load_checkpoint``'s); metrics after it are
        dropped. Returns its epoch (0: none)."""
        if is_main:
            for leftover in self.remove_leftovers():
                logger.info("removed %s (left by an interrupted write)", leftover)
        checkpoints = self.list_checkpoints()
        if not checkpoints:  # keep epoch 0's evaluation (an app session that was opened but never trained shows it)
            logger.info("%s has no checkpoint: starting from epoch 1", self.path)
            epoch = 0
        else:
            for path in reversed(checkpoints):
                try:
                    trainable, optimizer_state, state, extra = self.load_checkpoint(path)
                    restore(trainable, optimizer_state, state, extra)
                    break
                except (OSError, ValueError, KeyError, SafetensorError) as error:  # a truncated file, bad JSON, ...
                    logger.warning("checkpoint %s is damaged (%s): trying the one before it", path, error)
            else:
                raise ConfigError(f"cannot resume {str(self.path)!r}: every checkpoint is damaged ({', '.join(p.name for p in checkpoints)})")
            epoch = state["epoch"]
        if is_main:
            self.write_metrics([m for m in self.read_metrics() if m["epoch"] <= epoch])
        return epoch

    # weights -------------------------------------------------------------------------------------
    def weights(self, lora: bool, denoiser_name: str) -> Path:
        """Where the run's loadable weights are: lora/ (``pipe.load_lora_weights``) or the whole denoiser's folder."""
        return self.lora if lora else self.denoiser(denoiser_name)

    def save_weights(self, family: ModelFamily, denoiser: torch.nn.Module, lora: bool) -> Path:
        """Write the loadable weights of ``denoiser`` (unwrapped) atomically; return their folder."""
        target = self.weights(lora, family.denoiser_name)
        if lora:
            family.save_lora(denoiser, target)
        else:
            with atomic_directory(target) as tmp:
                denoiser.save_pretrained(tmp, safe_serialization=True)
        return target

    def lock(self) -> None:
        """Become the run folder's one writer, or raise RunFolderBusy naming the process that is.

        An OS lock (``flock`` on RUN/.lock, holding the writer's process id): the kernel releases it when
        the process ends, however it ends, so a crashed run never blocks its folder. Taking it again in
        the same process is a no-op (a trainer and its resume in one Python session).
        """
        import fcntl
        import os

        key = self.path.resolve()
        if key in _HELD:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_NAME, "a+")  # noqa: SIM115  (kept open while the lock is held)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderBusy(f"run folder {str(self.path)!r} is being written by process {holder}: wait for it, or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _HELD[key] = handle

    def remove_leftovers(self) -> list[Path]:
        """Delete what interrupted atomic writes left (``pxpo.io.is_leftover``); call with the lock held. Returns
        what was removed."""
        removed = []
        for folder in (self.path, self.checkpoints, *sorted(self.eval_dir.glob("*"))):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if is_leftover(entry.name):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                    removed.append(entry)
        return removed

    def clear(self) -> None:
        """Delete everything but the lock (call with the lock held)."""
        for entry in self.path.iterdir():
            if entry.name != LOCK_NAME:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def is_empty(self) -> bool:
        """No files but (perhaps) the lock: a folder a failed start left behind can be used again."""
        return not self.path.exists() or all(p.name == LOCK_NAME for p in self.path.iterdir())

    def denoiser(self, name: str) -> Path:
        """The folder of a fully fine-tuned denoiser ("unet" or "transformer")."""
        return self.path / name

    # metrics -----------------------------------------------------------------------------------
    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def append_metrics(self, record: dict) -> list[dict]:
        """Add one epoch's line (rewrites the file atomically: it is small); return all lines."""
        records = [*self.read_metrics(), record]
        self.write_metrics(records)
        return records

    def write_metrics(self, records: list[dict]) -> None:
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in records))

    # evaluation images -------------------------------------------------------------------------
    def eval_image_path(self, epoch: int, seed: int) -> Path:
        return self.eval_dir / f"{CHECKPOINT_PREFIX}{epoch:04d}" / f"seed_{seed:04d}.png"

    def save_eval_images(self, epoch: int, images: torch.Tensor, seeds: list[int]) -> None:
        """images [N, 3, H, W] in [0, 1], one per seed."""
        for image, seed in zip(images, seeds):
            save_image(to_pil(image), self.eval_image_path(epoch, seed))

    # checkpoints -------------------------------------------------------------------------------
    def checkpoint_path(self, epoch: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{epoch:04d}"

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a half-written one is never listed: it is renamed in last)."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
        return sorted(p for p in found if (p / "state.json").exists())

    def last_checkpoint_epoch(self) -> int:
        """The epoch of the newest complete checkpoint (0: none)."""
        checkpoints = self.list_checkpoints()
        return int(checkpoints[-1].name.removeprefix(CHECKPOINT_PREFIX)) if checkpoints else 0

    def save_checkpoint(
        self,
        epoch: int,
        trainable: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        state: dict,
        keep: int,
        extra: dict[str, Tensors] | None = None,
    ) -> Path:
        """Write checkpoint ``epoch`` atomically and delete all but the ``keep`` newest. ``extra``: more tensors by file
        stem, each kept in STEM.safetensors, e.g. "ema" (the averaged weights by name, ``pxpo.ema.WeightAverage.tensors``)
        and "region" (``pxpo.region.JudgedRegion.tensors``)."""
        target = self.checkpoint_path(epoch)
        tensors, param_groups = flatten_optimizer_state(optimizer)
        with atomic_directory(target) as tmp:
            _save_tensors(trainable, tmp / "trainable.safetensors", target)
            _save_tensors(tensors, tmp / "optimizer.safetensors", target)
            for stem, values in (extra or {}).items():
                if stem in CHECKPOINT_TENSORS:
                    raise ValueError(f"extra checkpoint tensors {stem!r}: the name is taken ({', '.join(CHECKPOINT_TENSORS)})")
                _save_tensors(values, tmp / f"{stem}.safetensors", target)
            (tmp / "state.json").write_text(json.dumps({"epoch": epoch, "param_groups": param_groups, **state}, indent=2))
        for old in self.list_checkpoints()[:-keep]:
            shutil.rmtree(old)
        return target

    @staticmethod
    def load_checkpoint(path: Path) -> tuple[Tensors, dict, dict, dict[str, Tensors]]:
        """(trainable tensors, optimizer state_dict, state, the extra tensors by file stem) from a checkpoint folder."""
        state = json.loads((path / "state.json").read_text())
        optimizer_state = unflatten_optimizer_state(load_file(path / "optimizer.safetensors"), state.pop("param_groups"))
        extra = {file.stem: load_file(file) for file in sorted(path.glob("*.safetensors")) if file.stem not in CHECKPOINT_TENSORS}
        return load_file(path / "trainable.safetensors"), optimizer_state, state, extra


def _save_tensors(tensors: Tensors, path: Path, checkpoint: Path) -> None:
    """``save_file`` (contiguous copies where needed), raising OSError naming the checkpoint's file (safetensors raises
    its own error type, e.g. "Error while serializing: I/O error: No space left on device (os error 28)", which names
    no file)."""
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    except SafetensorError as error:
        found = re.search(r"\(os error (\d+)\)", str(error))
        shown = str(checkpoint / path.name)
        if found is None:
            raise OSError(f"cannot write the checkpoint {shown!r}: {error}") from None
        code = int(found.group(1))
        raise OSError(code, f"{os.strerror(code)} while writing the checkpoint", shown) from None


def load_run_pipeline(path: str | Path) -> tuple[DiffusionPipeline, Config]:
    """A run folder's base model with its trained weights (LoRA or the whole denoiser), and the run's config."""
    from pxpo.families import family_for
    from pxpo.models import load_pipeline

    run = RunFolder(path)
    config = load_config(run.config)
    model = config.model
    pipe = load_pipeline(model.pretrained, single_file_config=model.single_file_config)  # the run's base model, as trained
    family = family_for(pipe, config.sample.sde_type)
    weights = run.weights(model.lora, family.denoiser_name)
    if not weights.is_dir():
        raise ConfigError(f"run folder {str(run.path)!r} has no trained weights (no {weights.name}/): nothing to sample")
    if model.lora:
        pipe.load_lora_weights(str(weights))
        if not getattr(family.denoiser, "peft_config", None):  # diffusers loads no key that fits, with a notice only
            raise ConfigError(
                f"the LoRA in {str(weights)!r} fits no layer of {model.pretrained!r} ({type(pipe).__name__}): it was trained on "
                "another model; the run's config.toml must name the model it was trained on"
            )
    else:
        family.denoiser = type(family.denoiser).from_pretrained(str(weights))
    return pipe, config
