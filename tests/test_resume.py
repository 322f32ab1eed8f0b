"""Checkpoints and resume: a resumed run ends as the uninterrupted one, whatever a crash (kill -9, a full disk, a
damaged checkpoint) left behind."""

import pytest
import torch
from safetensors.torch import load_file

from pxpo.cli import main
from pxpo.config import ConfigError
from pxpo.models import trainable_state_dict
from pxpo.trainer import Trainer
from pxpo.world.architecture import build_tiny_pipeline

pytestmark = pytest.mark.slow  # every test here trains

SMALL = {"sample": {"num_steps": 3, "batch_size": 4}, "train": {"batch_size": 4}, "eval": {"seeds": [0]}}


def small(make_config, **run):
    return make_config(**SMALL, run={"checkpoint_every": 1, **run})


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and len(a) > 0 and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_equals_an_uninterrupted_run(make_config, tmp_path):
    first = Trainer(small(make_config, num_epochs=3, name="straight"), pipeline=build_tiny_pipeline(0), progress=False)
    full = first.train()

    Trainer(small(make_config, num_epochs=1, name="stopped"), pipeline=build_tiny_pipeline(0), progress=False).train()
    second = Trainer(small(make_config, num_epochs=3, name="stopped"), pipeline=build_tiny_pipeline(0),
                     run_dir=tmp_path / "runs" / "stopped", resume=True, progress=False)  # fmt: skip
    assert second.start_epoch == 2
    resumed = second.train()

    assert [m["epoch"] for m in resumed] == [0, 1, 2, 3]
    for a, b in zip(full, resumed):
        for key in ["reward_mean", "eval_reward_mean", "loss", "approx_kl"]:
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["epoch"], key)
    weights_full = load_file(first.run.lora / "pytorch_lora_weights.safetensors")
    weights_resumed = load_file(second.run.lora / "pytorch_lora_weights.safetensors")
    assert weights_full.keys() == weights_resumed.keys()
    for key in weights_full:
        torch.testing.assert_close(weights_full[key], weights_resumed[key], rtol=1e-5, atol=1e-7)


def test_per_prompt_statistics_survive_a_resume(make_config, tmp_path):
    def config(epochs, name):
        return make_config(sample={"prompts": ["red taxi in traffic", "nature landscape"], "num_steps": 2, "batch_size": 4},
                           train={"batch_size": 4}, eval={"seeds": [0]}, advantage={"normalization": "per_prompt", "per_prompt_min_count": 2},
                           run={"num_epochs": epochs, "name": name})  # fmt: skip

    straight = Trainer(config(3, "straight"), pipeline=build_tiny_pipeline(0), progress=False)
    straight.train()
    Trainer(config(2, "cut"), pipeline=build_tiny_pipeline(0), progress=False).train()
    resumed = Trainer(config(3, "cut"), pipeline=build_tiny_pipeline(0), run_dir=tmp_path / "runs" / "cut", resume=True, progress=False)
    assert resumed.algorithm.state_dict()["tracker"] and resumed.start_epoch == 3  # the statistics of epochs 1-2 are back
    resumed.train()
    a, b = resumed.algorithm.state_dict()["tracker"], straight.algorithm.state_dict()["tracker"]
    assert a.keys() == b.keys()
    for prompt in a:
        torch.testing.assert_close(torch.tensor(a[prompt]), torch.tensor(b[prompt]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "optimizer.safetensors", "state.json"])
def test_resume_repairs_what_a_crash_left_and_falls_back_past_a_damaged_checkpoint(make_config, caplog, damaged):
    import logging
    import shutil

    config = small(make_config, num_epochs=2, name="crashy", keep_checkpoints=2)
    trainer = Trainer(config, pipeline=build_tiny_pipeline(0), progress=False)
    trainer.train()
    run = trainer.run
    epoch_1 = load_file(run.checkpoints / "epoch_0001" / "trainable.safetensors")
    # what kill -9 at bad moments leaves: a half-written newest checkpoint, temporary folders, no lora/ (killed mid-swap)
    (run.checkpoints / "epoch_0002" / damaged).write_bytes(b"\x00" * 10 if damaged != "state.json" else b"{")
    (run.path / ".lora.tmp-abc123").mkdir()
    (run.path / ".lora.old-def456").mkdir()
    (run.checkpoints / ".epoch_0003.tmp-x").mkdir()
    (run.path / ".metrics.jsonl.k2j.tmp").write_text("")
    shutil.rmtree(run.lora)

    with caplog.at_level(logging.INFO):
        resumed = Trainer(small(make_config, num_epochs=2, name="crashy"), pipeline=build_tiny_pipeline(0), run_dir=run.path, resume=True,
                          progress=False)  # fmt: skip
    assert "epoch_0002 is damaged" in caplog.text
    assert resumed.start_epoch == 2  # from the intact epoch-1 checkpoint
    assert not [p for p in run.path.rglob(".*") if p.name != ".lock"]  # every leftover removed
    saved = load_file(run.lora / "pytorch_lora_weights.safetensors")  # lora/ rebuilt from the checkpoint resumed from
    assert saved and same_weights(trainable_state_dict(resumed.denoiser), epoch_1)
    assert [m["epoch"] for m in resumed.train()] == [0, 1, 2]


@pytest.mark.parametrize("delay", [0.05, 0.8])  # early in epoch 3 (sampling) and later (training); the state a kill
# during a checkpoint write leaves is made by hand in the test above
def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_runs_lora_exactly(tmp_path, quick_toml, delay):
    import signal
    import subprocess
    import sys
    import time

    def config(name):
        return quick_toml(name, run={"num_epochs": 4, "checkpoint_every": 1})

    command = [sys.executable, "-m", "pxpo.cli", "train"]
    assert subprocess.run([*command, config("straight")], capture_output=True, timeout=600).returncode == 0
    victim = subprocess.Popen([*command, config("killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "runs" / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed = subprocess.run([*command, "--resume", str(tmp_path / "runs" / "killed")], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "runs" / "straight" / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "runs" / "killed" / "lora" / "pytorch_lora_weights.safetensors")
    assert same_weights(a, b)  # bit for bit


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_a_rerun(make_config, caplog):
    import logging

    def broken(images, prompts, metadata):
        raise RuntimeError("the reward model crashed")

    config = small(make_config, num_epochs=2, name="again", checkpoint_every=2)
    with pytest.raises(RuntimeError, match="crashed"):
        Trainer(config, reward_fn=broken, pipeline=build_tiny_pipeline(0), progress=False).train()
    with caplog.at_level(logging.WARNING):
        again = Trainer(config, pipeline=build_tiny_pipeline(0), progress=False)  # the same run name
    assert "failed before its first checkpoint: starting afresh" in caplog.text
    assert [m["epoch"] for m in again.train()] == [0, 1, 2]
    with pytest.raises(ConfigError, match="already exists and is not empty"):  # a run with checkpoints is never cleared
        Trainer(config, pipeline=build_tiny_pipeline(0), progress=False)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_older_checkpoint_stays(tmp_path, quick_toml, capsys, monkeypatch):
    import errno

    import pxpo.run_folder

    config = quick_toml("disk", run={"num_epochs": 2, "checkpoint_every": 1}, sample={"num_steps": 2, "batch_size": 2})
    real, calls = pxpo.run_folder.save_file, []

    def fill_up(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # the second checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(pxpo.run_folder, "save_file", fill_up)
    assert main(["train", config]) == 2
    err = capsys.readouterr().err
    run = tmp_path / "runs" / "disk"
    error, *rest = err.strip().splitlines()  # the error in one line, then where a resume starts
    assert error.startswith("pxpo train: error: ") and "No space left on device" in error and "Traceback" not in err
    assert rest == [f"the last checkpoint is epoch 1: a resume starts at epoch 2. Continue with: pxpo train --resume {run}"]
    assert [p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")] == ["epoch_0001"]
    load_file(run / "checkpoints" / "epoch_0001" / "trainable.safetensors")  # intact
