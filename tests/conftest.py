import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: steadier timings on shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from pxpo.config import validate_config  # noqa: E402
from pxpo.hooks import Callback  # noqa: E402
from pxpo.world.architecture import build_tiny_pipeline  # noqa: E402


@pytest.fixture
def tiny_pipe():
    """A fresh randomly initialised tiny SD-architecture pipeline (4 x 16 x 16 latents, 64 px)."""
    return build_tiny_pipeline(seed=0)


@pytest.fixture
def make_config(tmp_path):
    """A small, fast training config; keyword sections override it."""

    def make(**sections):
        data = {
            "sample": {"num_steps": 8, "batch_size": 8, "prompts": ["red taxi in traffic"]},
            "train": {"batch_size": 8, "learning_rate": 1e-2},
            "eval": {"seeds": [0, 1]},
            "run": {"num_epochs": 2, "output_dir": str(tmp_path / "runs"), "name": "test", "checkpoint_every": 1},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return validate_config(data)

    return make


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fast_tier_trains_and_serves_nothing(request, monkeypatch):
    """The ``slow`` marker means: trains (a Trainer, ``pxpo train``, an optimizer loop over a pipeline) or serves (a
    server, a browser, a subprocess). A test without it that builds a Trainer or starts a uvicorn server fails here.
    (A Trainer whose constructor refuses its input has done no work: that is a fast test.)"""
    if request.node.get_closest_marker("slow"):
        return
    import uvicorn

    from pxpo.trainer import Trainer

    build = Trainer.__init__

    def guarded_build(self, *args, **kwargs):
        build(self, *args, **kwargs)
        pytest.fail("this test builds a Trainer: mark it @pytest.mark.slow (the fast tier trains nothing)", pytrace=False)

    def guarded_server(self, *args, **kwargs):
        pytest.fail("this test starts a server: mark it @pytest.mark.slow (the fast tier serves nothing)", pytrace=False)

    monkeypatch.setattr(Trainer, "__init__", guarded_build)
    monkeypatch.setattr(uvicorn.Server, "__init__", guarded_server)


class PhaseRecorder(Callback):
    """A ``pxpo.hooks.Callback`` that records the trainer's phases in order and what each returned.

    Attributes:
        events: ("begin" | "end", phase, epoch) in the order they happened.
        results: (phase, epoch) -> the phase's result (trajectories, reward output, advantages, diagnostics, record).
        records: the epoch-end records.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []
        self.results: dict[tuple[str, int], object] = {}
        self.records: list[dict] = []

    def on_phase_begin(self, trainer, phase, epoch):
        self.events.append(("begin", phase, epoch))

    def on_phase_end(self, trainer, phase, epoch, result):
        self.events.append(("end", phase, epoch))
        self.results[phase, epoch] = result

    def on_epoch_end(self, trainer, record):
        self.records.append(record)


@pytest.fixture
def phases() -> PhaseRecorder:
    """A fresh PhaseRecorder: pass it as ``Trainer(config, callbacks=[phases])``."""
    return PhaseRecorder()


@pytest.fixture
def quick_toml(tmp_path):
    """Write a small config file for command-line runs (tiny-random, 3 steps, 2 images, runs in tmp_path/runs).

    ``quick_toml(name, run={"num_epochs": 4})``: keyword sections override the defaults; returns the path as a str.
    """
    import tomli_w

    def write(name: str, **sections) -> str:
        data = {
            "model": {"pretrained": "tiny-random"},
            "sample": {"num_steps": 3, "batch_size": 2},
            "train": {"batch_size": 2, "learning_rate": 1e-2},
            "eval": {"seeds": [0]},
            "run": {"num_epochs": 2, "output_dir": str(tmp_path / "runs"), "name": name},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(data))
        return str(path)

    return write
