"""Processes and trackers: what accelerate's launch gives a run, checked before any work.

- ``check_launch``: the launcher's process count (WORLD_SIZE) must be what accelerate sees, human feedback runs in
  one process, and the GRPO groups fill an epoch's samples over all processes;
- ``stop_when_orphaned``: a launched worker exits within seconds once its launcher is gone;
- ``stop_on_signals`` / ``raise_if_stopped``: SIGINT and SIGTERM end a run the way Ctrl-C does, reliably;
- ``check_trackers`` / ``flat_config`` / ``log_tracker_images``: experiment trackers (``run.log_with``), their
  hyperparameters and images.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from pxpo.config import Config, ConfigError

logger = logging.getLogger(__name__)


def process_state() -> PartialState:
    """accelerate's process state, set up as the Accelerator will set it up (ACCELERATE_USE_CPU: gloo on CPUs)."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def stop_when_orphaned(interval: float = 1.0) -> None:
    """In a launched worker: exit within ``interval`` seconds once the launcher is gone (``kill -9`` of ``accelerate
    launch`` leaves its workers re-parented and training on). Its checkpoints are intact; ``--resume`` continues."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                logger.error("the launcher (process %d) is gone: this worker stops; continue with pxpo train --resume", parent)
                os._exit(1)

    threading.Thread(target=watch, name="pxpo-orphan-watchdog", daemon=True).start()


_stop_requested = threading.Event()


def stop_on_signals() -> None:
    """Make SIGINT and SIGTERM raise ``KeyboardInterrupt`` (a run then ends with one line, its checkpoints intact).

    Python swallows an exception raised while a weakref callback or ``__del__`` runs (and prints "Exception ignored
    in ..." with a traceback), so a signal landing there would be lost; the request is therefore also remembered, the
    swallowed interrupt is not printed, and the trainer honours the request at its next check (``raise_if_stopped``,
    before each epoch and each optimiser step).
    """
    import signal
    import sys

    def stop(signum, frame):
        _stop_requested.set()
        raise KeyboardInterrupt

    default_hook = sys.unraisablehook

    def quiet_interrupts(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _stop_requested.is_set()):
            default_hook(unraisable)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    sys.unraisablehook = quiet_interrupts


def raise_if_stopped() -> None:
    """Raise ``KeyboardInterrupt`` if a stop was requested by a signal (see ``stop_on_signals``)."""
    if _stop_requested.is_set():
        raise KeyboardInterrupt


def check_launch(config: Config) -> None:
    """Refuse launches that would go wrong silently: accelerate's process count must match the launcher's, and the
    config's settings that depend on it must hold for it (``Config.check_processes``)."""
    state = process_state()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != state.num_processes:
        raise ConfigError(
            f"the launcher started {world} processes (WORLD_SIZE) but accelerate sees {state.num_processes}: each would train "
            "alone. On GPUs: accelerate launch --multi_gpu --num_processes N -m pxpo.cli train CONFIG; on CPUs: "
            "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N -m pxpo.cli train CONFIG"
        )
    if state.num_processes > 1 and (config.sample.single_image_seed is not None or config.reward.name == "folder_feedback"):
        raise ConfigError(
            f"human feedback (single-image mode, the folder protocol) runs in one process; this launch has {state.num_processes}: "
            "the other ranks would train on images nobody saw"
        )
    config.check_processes(state.num_processes)


def check_trackers(names: Sequence[str]) -> None:
    """Each tracker's package (named as the tracker, for every one accelerate knows) must be importable: say which
    to install before any work."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"run.log_with = {list(names)}: {name!r} needs its package: pip install {name}")


def flat_config(config: Config) -> dict[str, int | float | str | bool]:
    """The config as flat ``section.key`` values (lists and tables as TOML-ish text), for trackers' hyperparameters."""
    flat = {}
    for section, values in config.model_dump(mode="json").items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def log_tracker_images(trackers: Sequence, images, epoch: int) -> None:
    """The evaluation images [N, 3, H, W] to each tracker: TensorBoard takes a tensor, the others PIL images."""
    from pxpo.images import to_pil

    for tracker in trackers:
        values = {"eval_images": images.float().cpu()} if tracker.name == "tensorboard" else {"eval_images": [to_pil(i) for i in images]}
        with contextlib.suppress(NotImplementedError, AttributeError):
            tracker.log_images(values, step=epoch)


def new_run_path(config: Config, config_name: str) -> Path:
    """A new run's folder: ``run.output_dir / run.name`` (default: the config's name, the algorithm when it is not
    the default one and the config's name does not say it, and the time, on the main process's clock for every rank:
    ``blue_penalty-20261205-101500``, ``blue_penalty-ddpo-20261205-101500`` for ``--set train.algorithm=ddpo``)."""
    from accelerate.utils import broadcast_object_list

    from pxpo.config import TrainConfig

    algorithm = config.train.algorithm
    named = algorithm == TrainConfig.model_fields["algorithm"].default or algorithm.lower() in config_name.lower()
    stem = config_name if named else f"{config_name}-{algorithm}"
    name = config.run.name or f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    if process_state().num_processes > 1:
        name = broadcast_object_list([name])[0]
    return Path(config.run.output_dir) / name
