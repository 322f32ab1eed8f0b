"""Callbacks: code of yours that runs at the trainer's phases, without touching the trainer.

An epoch runs the phases ``sample -> reward -> advantage -> update -> evaluate`` (``evaluate`` also runs once
as epoch 0, for the base model). A callback is either

- a plain function ``fn(trainer, record)``: called after each epoch is logged, with its metrics record; or
- a ``Callback`` (subclass it and override what you need), in the manner of TRL's ``TrainerCallback``:
  ``on_phase_begin(trainer, phase, epoch)`` and ``on_phase_end(trainer, phase, epoch, result)`` around each phase
  (``result`` is what the phase returned: the trajectories, the heatmaps, the advantages, the update's diagnostics,
  the evaluation's record), and ``on_epoch_end(trainer, record)``.

Phase callbacks run on every process; epoch-end callbacks on the main process (where the record is logged).
Benchmarks time phases with them instead of patching the trainer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

Trainer = Any  # a pxpo.trainer.Trainer (not imported: the trainer is the layer above this one)

PHASES = ("sample", "reward", "advantage", "update", "evaluate")


class Callback:
    """Override any of these; each does nothing by default."""

    def on_phase_begin(self, trainer: Trainer, phase: str, epoch: int) -> None:
        """Before ``phase`` (one of PHASES) of ``epoch``."""

    def on_phase_end(self, trainer: Trainer, phase: str, epoch: int, result: Any) -> None:
        """After ``phase`` of ``epoch``, with what it returned."""

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        """After the epoch's metrics ``record`` is logged (main process)."""


class PhaseTimer(Callback):
    """Seconds of the last run of each phase (``seconds["sample"]``, ...); the trainer's own epoch timings."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}

    def on_phase_begin(self, trainer: Trainer, phase: str, epoch: int) -> None:
        self._started[phase] = time.perf_counter()

    def on_phase_end(self, trainer: Trainer, phase: str, epoch: int, result: Any) -> None:
        self.seconds[phase] = time.perf_counter() - self._started.pop(phase)


class _EpochEnd(Callback):
    """A plain ``fn(trainer, record)`` as a Callback."""

    def __init__(self, fn: Callable[[Trainer, dict], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.fn(trainer, record)


EpochCallback = Callable[[Trainer, dict], None]


class Callbacks:
    """The trainer's callbacks, called in the order given."""

    def __init__(self, callbacks: Sequence[Callback | EpochCallback] = ()) -> None:
        for c in callbacks:
            if not isinstance(c, Callback) and not callable(c):
                raise TypeError(f"callback {c!r}: expected a pxpo.hooks.Callback or a function fn(trainer, record)")
        self.callbacks = [c if isinstance(c, Callback) else _EpochEnd(c) for c in callbacks]

    def phase(self, trainer: Trainer, phase: str, epoch: int, run: Callable[[], Any]) -> Any:
        """``run()`` as ``phase`` of ``epoch``, with the callbacks around it; returns its result."""
        for c in self.callbacks:
            c.on_phase_begin(trainer, phase, epoch)
        result = run()
        for c in self.callbacks:
            c.on_phase_end(trainer, phase, epoch, result)
        return result

    def epoch_end(self, trainer: Trainer, record: dict) -> None:
        for c in self.callbacks:
            c.on_epoch_end(trainer, record)
