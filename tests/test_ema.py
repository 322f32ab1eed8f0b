"""The EMA of the trained weights (train.ema_decay): its update against a hand-written reference, what it is used
for (evaluation, export), checkpoints that resume it bit for bit, and settings that are refused.

Also a worker: ``python tests/test_ema.py CONFIG OUT`` under ``accelerate launch`` trains and saves its rank's EMA.
"""

import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pxpo.config import ConfigError, check_resume, validate_config
from pxpo.ema import WeightAverage, weight_average
from pxpo.models import load_trainable_state_dict, trainable_state_dict
from pxpo.run_folder import RunFolder

SMALL = {"sample": {"num_steps": 3, "batch_size": 4}, "eval": {"seeds": [0]}}
LORA_FILE = "pytorch_lora_weights.safetensors"


def reference_decay(update: int, decay: float) -> float:
    """diffusers' EMAModel.get_decay written out: s = update - 1; 0 while s <= 0, else min(decay, (1 + s) / (10 + s))."""
    s = update - 1
    return 0.0 if s <= 0 else min(decay, (1 + s) / (10 + s))


def toy_module() -> torch.nn.Module:
    """Two trained float64 tensors and one frozen one (not averaged)."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)).double()
    module[1].bias.requires_grad_(False)
    return module


def trained(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


# the update --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("every", [1, 3])
def test_the_average_follows_a_hand_written_ema_with_the_decay_ramp_and_the_interval(every):
    module, decay = toy_module(), 0.4  # the ramp n / (n + 9) reaches 0.4 at the 6th update: both regimes are met
    average = WeightAverage(module, decay, every)
    assert average.names == ["0.weight", "0.bias", "1.weight"]  # the frozen 1.bias is not averaged
    expected = [p.detach().clone() for p in trained(module)]  # the average starts as the weights
    generator, updates = torch.Generator().manual_seed(0), 0
    for step in range(1, 25):
        with torch.no_grad():
            for p in module.parameters():  # an "optimizer step": new weights
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
        average.after_optimizer_step()
        if step % every == 0:
            updates += 1
            d = reference_decay(updates, decay)
            expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, trained(module))]
        for name, want in zip(average.names, expected):
            torch.testing.assert_close(average.tensors()[name], want, rtol=1e-12, atol=1e-15)
    assert updates >= 6 and reference_decay(updates, decay) == decay
    assert average.counters() == {"optimizer_steps": 24, "updates": updates}


def test_swapped_in_holds_the_average_and_then_the_live_weights_bit_for_bit():
    module = toy_module()
    average = WeightAverage(module, 0.9, 1)
    for _ in range(2):  # the first update copies the weights, the second averages: the average is not the weights
        with torch.no_grad():
            for p in module.parameters():
                p.add_(1.0)
        average.after_optimizer_step()
    live = {k: v.clone() for k, v in trainable_state_dict(module).items()}
    frozen = module[1].bias.detach().clone()
    with average.swapped_in():
        inside = {k: v.clone() for k, v in trainable_state_dict(module).items()}
    assert all(torch.equal(inside[k], average.tensors()[k]) for k in inside)
    assert not all(torch.equal(inside[k], live[k]) for k in inside)
    assert all(torch.equal(v, live[k]) for k, v in trainable_state_dict(module).items())
    assert torch.equal(module[1].bias, frozen)


def test_a_saved_average_loads_exactly_and_goes_on_as_the_original(tmp_path):
    module = toy_module()
    first = WeightAverage(module, 0.7, 2)
    for _ in range(5):
        with torch.no_grad():
            for p in trained(module):
                p.mul_(1.1).add_(0.01)
        first.after_optimizer_step()
    save_file(first.tensors(), tmp_path / "ema.safetensors")
    counters = json.loads(json.dumps(first.counters()))
    second = WeightAverage(module, 0.7, 2)  # a fresh average (of the current weights), then loaded
    second.load(load_file(tmp_path / "ema.safetensors"), counters)
    for _ in range(3):
        with torch.no_grad():
            for p in trained(module):
                p.mul_(0.9)
        first.after_optimizer_step()
        second.after_optimizer_step()
    assert first.counters() == second.counters() == {"optimizer_steps": 8, "updates": 4}
    assert all(torch.equal(first.tensors()[k], second.tensors()[k]) for k in first.names)
    with pytest.raises(ValueError, match=r"does not fit the trained parameters \(missing \['0.bias'\]"):
        second.load({k: v for k, v in first.tensors().items() if k != "0.bias"}, counters)


def test_no_average_is_built_when_ema_decay_is_0(make_config):
    assert weight_average(toy_module(), make_config().train) is None
    assert isinstance(weight_average(toy_module(), make_config(train={"ema_decay": 0.5}).train), WeightAverage)


def test_a_checkpoint_keeps_the_ema_in_safetensors_and_only_when_there_is_one(tmp_path):
    run = RunFolder(tmp_path / "run")
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    ema = {"w": torch.arange(4.0)}
    run.save_checkpoint(1, {"w": torch.ones(4)}, optimizer, {"ema": {"optimizer_steps": 3, "updates": 1}}, keep=2, extra={"ema": ema})
    run.save_checkpoint(2, {"w": torch.ones(4)}, optimizer, {}, keep=2)
    *_, state, extra = RunFolder.load_checkpoint(run.checkpoint_path(1))
    assert torch.equal(extra["ema"]["w"], ema["w"]) and state["ema"] == {"optimizer_steps": 3, "updates": 1}
    assert RunFolder.load_checkpoint(run.checkpoint_path(2))[3] == {}
    assert not (run.checkpoint_path(2) / "ema.safetensors").exists()


# settings ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, math.nan, math.inf])
def test_an_ema_decay_outside_0_to_1_is_refused_in_one_line(value):
    with pytest.raises(ConfigError) as error:
        validate_config({"train": {"ema_decay": value}})
    (line,) = str(error.value).splitlines()[1:]
    assert line.startswith("train.ema_decay: ") and f"(got {value!r})" in line


def test_an_ema_update_interval_below_1_and_an_ema_in_single_image_mode_are_refused():
    with pytest.raises(ConfigError, match=r"train.ema_update_every: Input should be greater than 0 \(got 0\)"):
        validate_config({"train": {"ema_update_every": 0}})
    single = {"sample": {"single_image_seed": 3, "batch_size": 1}, "train": {"batch_size": 1, "ema_decay": 0.9}}
    with pytest.raises(ConfigError, match=r"train.ema_decay = 0.9: single-image mode \(sample.single_image_seed = 3\)"):
        validate_config(single)


@pytest.mark.parametrize(
    ("saved", "given"),
    [({}, {"ema_decay": 0.9}), ({"ema_decay": 0.9}, {}), ({"ema_decay": 0.9}, {"ema_decay": 0.9, "ema_update_every": 2})],
)
def test_a_resume_cannot_switch_or_change_the_ema(saved, given):
    """A run saved without an EMA (also one from before the setting existed: its config.toml lacks the key) cannot be
    resumed with one, and the reverse: its checkpoints hold no average to go on from."""
    with pytest.raises(ConfigError, match=r"would change what the run means: train\.ema_"):
        check_resume(validate_config({"train": saved}), validate_config({"train": given}))


# runs ------------------------------------------------------------------------------------------------------------
def _trainer(make_config, name, epochs=2, run_dir=None, resume=False, model=None, **train):
    """A tiny run: 4 samples per epoch, 2 optimizer steps (train.batch_size 2), a checkpoint after every epoch."""
    from pxpo.trainer import Trainer
    from pxpo.world.architecture import build_tiny_pipeline

    run = {"num_epochs": epochs, "name": name, "checkpoint_every": 1}
    config = make_config(**SMALL, model=model or {}, train={"batch_size": 2, **train}, run=run)
    return Trainer(config, pipeline=build_tiny_pipeline(0), progress=False, run_dir=run_dir, resume=resume)


def _lora(run: RunFolder) -> dict[str, torch.Tensor]:
    return load_file(run.lora / LORA_FILE)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and len(a) > 0 and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ema_decay_0_builds_no_average_and_leaves_the_run_as_it_was(make_config):
    """With ema_decay = 0 nothing is averaged, swapped or saved (no object exists): a run that also sets the
    interval trains, evaluates and exports exactly as one that leaves both unset."""
    plain, off = _trainer(make_config, "plain"), _trainer(make_config, "off", ema_decay=0.0, ema_update_every=3)
    assert plain.ema is None and off.ema is None
    a, b = plain.train(), off.train()
    def untimed(records):
        return [{k: v for k, v in m.items() if not k.endswith("_seconds")} for m in records]

    assert untimed(a) == untimed(b) and len(a) == 3
    assert _same(_lora(plain.run), _lora(off.run))
    assert not list(off.run.checkpoints.rglob("ema.safetensors"))


@pytest.mark.slow
def test_evaluation_and_export_use_the_ema_weights_while_the_live_ones_train(make_config, tmp_path, monkeypatch):
    trainer = _trainer(make_config, "ema", ema_decay=0.9)  # 2 optimizer steps per epoch: 4 updates, the last with d = 4/13
    shown, original = {}, trainer.reporter.evaluation

    def seen(epoch: int, images: torch.Tensor) -> dict:  # the images the reporter saves and scores
        shown[epoch] = images.clone()
        return original(epoch, images)

    monkeypatch.setattr(trainer.reporter, "evaluation", seen)
    trainer.train()
    denoiser = trainer.accelerator.unwrap_model(trainer.denoiser)
    live = {k: v.clone() for k, v in trainable_state_dict(denoiser).items()}
    ema = load_file(trainer.run.checkpoint_path(2) / "ema.safetensors")
    assert trainer.ema.counters() == {"optimizer_steps": 4, "updates": 4}
    assert _same(ema, trainer.ema.tensors()) and not _same(ema, live)

    def images_and_export(weights: dict, name: str) -> tuple[torch.Tensor, dict]:
        """What the weights themselves make (set directly, without the EMA's swap): epoch 2's images, the lora/ file."""
        load_trainable_state_dict(denoiser, weights)
        images = trainer.schedule.eval_images(2, trainer._sample)
        folder = RunFolder(tmp_path / name)
        folder.save_weights(trainer.family, denoiser, lora=True)
        return images, _lora(folder)

    ema_images, ema_export = images_and_export(ema, "from_ema")
    live_images, live_export = images_and_export(live, "from_live")
    assert torch.equal(shown[2], ema_images) and not torch.equal(shown[2], live_images)
    assert _same(_lora(trainer.run), ema_export) and not _same(_lora(trainer.run), live_export)


@pytest.mark.slow
def test_without_lora_the_ema_covers_the_whole_denoiser_and_is_what_is_exported(make_config):
    trainer = _trainer(make_config, "full", epochs=1, model={"lora": False}, ema_decay=0.9)
    denoiser = trainer.accelerator.unwrap_model(trainer.denoiser)
    assert trainer.ema.names == [name for name, _ in denoiser.named_parameters()]  # every weight of the UNet
    trainer.train()
    exported = load_file(trainer.run.denoiser("unet") / "diffusion_pytorch_model.safetensors")
    ema, live = trainer.ema.tensors(), trainable_state_dict(denoiser)
    assert all(torch.equal(exported[k], ema[k]) for k in ema) and not all(torch.equal(exported[k], live[k]) for k in live)


@pytest.mark.slow
def test_a_resumed_run_has_the_uninterrupted_runs_ema_and_export_bit_for_bit(make_config, tmp_path):
    """Interval 3 with 2 optimizer steps per epoch: the resumed run must also know how many steps were counted."""
    ema = {"ema_decay": 0.9, "ema_update_every": 3}
    straight = _trainer(make_config, "straight", epochs=4, **ema)
    straight.train()
    _trainer(make_config, "cut", epochs=2, **ema).train()
    resumed = _trainer(make_config, "cut", epochs=4, run_dir=tmp_path / "runs" / "cut", resume=True, **ema)
    assert resumed.start_epoch == 3 and resumed.ema.counters() == {"optimizer_steps": 4, "updates": 1}
    resumed.train()
    assert straight.ema.counters() == resumed.ema.counters() == {"optimizer_steps": 8, "updates": 2}
    assert _same(straight.ema.tensors(), resumed.ema.tensors())
    saved = [load_file(trainer.run.checkpoint_path(4) / "ema.safetensors") for trainer in (straight, resumed)]
    assert _same(*saved)
    assert _same(_lora(straight.run), _lora(resumed.run))


@pytest.mark.slow
def test_a_checkpoint_that_lost_its_ema_is_damaged_and_the_one_before_it_is_used(make_config, tmp_path, caplog):
    first = _trainer(make_config, "lost", epochs=2, ema_decay=0.9)
    first.train()
    (first.run.checkpoint_path(2) / "ema.safetensors").unlink()
    with caplog.at_level(logging.WARNING):
        resumed = _trainer(make_config, "lost", epochs=2, run_dir=first.run.path, resume=True, ema_decay=0.9)
    assert "epoch_0002 is damaged (it has no ema.safetensors, and train.ema_decay = 0.9)" in caplog.text
    assert resumed.start_epoch == 2 and _same(resumed.ema.tensors(), load_file(first.run.checkpoint_path(1) / "ema.safetensors"))


@pytest.mark.slow
def test_two_processes_keep_the_same_ema_and_the_main_one_saves_it(tmp_path):
    import os
    import subprocess

    from test_multiprocess import free_port

    config = tmp_path / "two.toml"
    config.write_text(
        '[model]\npretrained = "tiny-random"\n[sample]\nnum_steps = 2\nbatch_size = 2\n'
        '[train]\nbatch_size = 1\nlearning_rate = 1e-2\nema_decay = 0.9\n'
        f'[eval]\nseeds = [0]\n[run]\nnum_epochs = 2\nname = "two"\noutput_dir = "{tmp_path / "runs"}"\n'
    )
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(free_port()), __file__, str(config), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launcher, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = load_file(tmp_path / "rank0_ema.safetensors"), load_file(tmp_path / "rank1_ema.safetensors")
    assert _same(rank0, rank1)  # the weights are the same on every rank after each step, so is their average
    assert _same(rank0, load_file(tmp_path / "runs" / "two" / "checkpoints" / "epoch_0002" / "ema.safetensors"))


def _two_process_worker(config_path: str, out: str) -> None:
    from pxpo.config import load_config
    from pxpo.trainer import Trainer

    trainer = Trainer(load_config(config_path), progress=False)
    trainer.train()
    save_file(trainer.ema.tensors(), Path(out) / f"rank{trainer.accelerator.process_index}_ema.safetensors")


if __name__ == "__main__":
    _two_process_worker(sys.argv[1], sys.argv[2])
