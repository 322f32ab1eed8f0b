"""Short training runs on the tiny pipeline: the reward goes up, LoRA loads in diffusers, resume is exact."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pxpo.cli import main
from pxpo.config import ConfigError
from pxpo.trainer import Trainer
from pxpo.world.architecture import build_tiny_pipeline

pytestmark = pytest.mark.slow  # the full tier (CI); `pytest -m "not slow"` is the fast tier


@pytest.mark.parametrize(
    ("algorithm", "model", "learning_rate", "min_gain"),
    [("pxpo", {"lora": True}, 1e-2, 0.05), ("ddpo", {"lora": False}, 1e-3, 0.02)],
)
def test_training_raises_the_blue_penalty_reward(make_config, tiny_pipe, algorithm, model, learning_rate, min_gain):
    config = make_config(
        model=model,
        train={"algorithm": algorithm, "learning_rate": learning_rate},
        run={"num_epochs": 4, "checkpoint_every": 4},
    )
    metrics = Trainer(config, pipeline=tiny_pipe, progress=False).train()
    start, end = metrics[0]["eval_reward_mean"], metrics[-1]["eval_reward_mean"]
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3, 4]
    # Same seeds before and after: the blue penalty of the fixed evaluation samples rose.
    assert end > start + min_gain, (start, end)
    assert metrics[-1]["reward_mean"] > metrics[1]["reward_mean"]


def test_run_folder_contents_and_lora_loads_into_a_fresh_pipeline(make_config, tiny_pipe):
    config = make_config(run={"num_epochs": 2, "checkpoint_every": 1, "keep_checkpoints": 1})
    trainer = Trainer(config, pipeline=tiny_pipe, progress=False)
    trainer.train()
    run = trainer.run
    for path in [run.config, run.metrics, run.reward_curve, run.evolution, run.lora / "pytorch_lora_weights.safetensors"]:
        assert path.is_file(), path
    assert [p.name for p in run.list_checkpoints()] == ["epoch_0002"]
    lines = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    for key in ["reward_mean", "reward_std", "approx_kl", "clipfrac", "loss", "sample_seconds", "train_seconds"]:
        assert key in lines[1], key
    assert run.eval_image_path(2, 1).is_file()

    def images(pipe):
        return pipe("red taxi in traffic", num_inference_steps=4, eta=1.0, output_type="pt",
                    generator=torch.Generator().manual_seed(5)).images

    fresh = build_tiny_pipeline(seed=0)
    before = images(fresh)
    fresh.load_lora_weights(str(run.lora))
    after = images(fresh)
    trained = images(tiny_pipe)  # the pipeline the trainer updated in place
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, trained, rtol=1e-4, atol=1e-4)


def test_resume_equals_an_uninterrupted_run(make_config, tmp_path):
    straight = make_config(run={"num_epochs": 3, "name": "straight", "checkpoint_every": 1})
    first = Trainer(straight, pipeline=build_tiny_pipeline(0), progress=False)
    full = first.train()

    stopped = make_config(run={"num_epochs": 1, "name": "stopped", "checkpoint_every": 1})
    Trainer(stopped, pipeline=build_tiny_pipeline(0), progress=False).train()
    resumed_config = make_config(run={"num_epochs": 3, "name": "stopped", "checkpoint_every": 1})
    second = Trainer(resumed_config, pipeline=build_tiny_pipeline(0), run_dir=tmp_path / "runs" / "stopped", resume=True, progress=False)
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


def test_lora_initialisation_follows_run_seed_not_global_state(make_config):
    """Two processes with the same config start from the same LoRA (its A matrices are random)."""
    from pxpo.models import trainable_state_dict

    def lora(name, seed):
        pipe = build_tiny_pipeline(0)  # (seeds the global RNG itself)
        torch.manual_seed(1234 + seed + len(name))  # another process's global RNG
        state = torch.random.get_rng_state()
        trainer = Trainer(make_config(run={"name": name, "seed": seed}), pipeline=pipe, progress=False)
        assert torch.equal(state, torch.random.get_rng_state())  # the trainer leaves the global RNG alone
        return trainable_state_dict(trainer.accelerator.unwrap_model(trainer.denoiser))

    first, again, other = lora("a", seed=0), lora("bb", seed=0), lora("c", seed=1)
    assert first.keys() == again.keys() and len(first) > 0
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)


def test_cli_train_sample_and_errors(tmp_path, capsys):
    config = tmp_path / "quick.toml"
    config.write_text(
        '[sample]\nnum_steps = 4\nbatch_size = 4\n[train]\nbatch_size = 4\n[eval]\nseeds = [0]\n'
        f'[run]\nnum_epochs = 1\noutput_dir = "{tmp_path / "runs"}"\nname = "cli"\n'
    )
    assert main(["train", str(config), "--no-progress", "--set", "train.learning_rate=1e-3"]) == 0
    run = tmp_path / "runs" / "cli"
    assert "learning_rate = 0.001" in (run / "config.toml").read_text()
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "--prompt", "red taxi in traffic", "--seed", "0", "1", "--num-steps", "3", "--out", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size == (128, 64)

    capsys.readouterr()
    assert main(["train", str(config), "--set", "sample.eta=0"]) == 2
    assert "sample.eta: Input should be greater than 0 (got 0)" in capsys.readouterr().err
    assert main(["train", str(config)]) == 2  # the run folder exists: refuse to overwrite it
    assert "already exists" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    assert "--resume RUN" in capsys.readouterr().out


@pytest.mark.parametrize("algorithm", ["pxpo", "ddpo"])
def test_batching_timesteps_leaves_the_gradient_unchanged(make_config, algorithm):
    """train.timesteps_per_forward only regroups work: each optimizer step sees the same summed gradient.

    5 trained steps in chunks of 1 (DDPO's loop), 2 (uneven: 2 + 2 + 1) and 5; the optimizer is stopped
    from moving so that both training batches of the epoch are compared at the same weights.
    """
    from pxpo.trainer import Batch

    def gradients(k: int) -> tuple[list[list[torch.Tensor]], dict]:
        config = make_config(
            sample={"num_steps": 5, "batch_size": 4},
            train={"algorithm": algorithm, "batch_size": 2, "timesteps_per_forward": k, "max_grad_norm": float("inf")},
            run={"name": f"chunks-{algorithm}-{k}"},
        )
        trainer = Trainer(config, pipeline=build_tiny_pipeline(seed=0), progress=False)
        trajectories = trainer.sample(1)
        heatmaps = trainer.reward(trajectories.images, trajectories.prompts, [{}] * len(trajectories))
        batch = Batch(trajectories, heatmaps, trainer.advantages(heatmaps, trajectories.prompts))
        seen = []
        trainer.optimizer.optimizer.step = lambda *a, **k: seen.append([p.grad.clone() for p in trainer.params])
        stats = trainer.update(batch, 1)
        return seen, stats

    reference, reference_stats = gradients(1)
    assert len(reference) == 2 and any(g.abs().max() > 0 for g in reference[0])
    for k in (2, 5):
        seen, stats = gradients(k)
        assert len(seen) == len(reference)
        for got, want in zip(seen, reference):
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
        for key in ("loss", "approx_kl", "clipfrac"):
            assert stats[key] == pytest.approx(reference_stats[key], rel=1e-4, abs=1e-6), key  # means of O(1) advantages: float32 rounding


def test_cli_output_piped_to_a_file_has_plain_lines_and_no_bar_frames(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "quick.toml"
    config.write_text(
        '[model]\npretrained = "tiny-random"\n[sample]\nnum_steps = 3\nbatch_size = 2\n[train]\nbatch_size = 2\n'
        f'[eval]\nseeds = [0]\n[run]\nnum_epochs = 2\noutput_dir = "{tmp_path / "runs"}"\nname = "piped"\n'
    )
    log = tmp_path / "log.txt"
    with log.open("w") as file:  # progress bars on, but the output is a file
        done = subprocess.run([sys.executable, "-m", "pxpo.cli", "train", str(config)], stdout=file, stderr=subprocess.STDOUT, timeout=600)
    text = out = log.read_text()
    assert done.returncode == 0, text[-2000:]
    assert "\r" not in text and "\x1b[" not in text, text[:500]
    assert "epoch 1 {" in text and "epoch 2 {" in text
    assert "run folder:" in out and "reward_curve.png" in out and "evolution.png" in out
    assert "requires torchvision" not in text


def test_eta_above_one_is_refused_before_any_work(make_config):
    from pxpo.config import ConfigError

    with pytest.raises(ConfigError, match=r"sample.eta: Input should be less than or equal to 1 \(got 1.5\)"):
        make_config(sample={"eta": 1.5})


def test_injected_pipeline_gets_the_same_sampler_set_up_as_a_loaded_one(make_config):
    from diffusers import DDIMScheduler, PNDMScheduler

    pipe = build_tiny_pipeline(seed=0)
    pipe.scheduler = PNDMScheduler.from_config({**pipe.scheduler.config, "set_alpha_to_one": True})  # as SD v1.4 ships
    trainer = Trainer(make_config(run={"num_epochs": 1}), pipeline=pipe, progress=False)
    assert isinstance(trainer.pipe.scheduler, DDIMScheduler) and not trainer.pipe.scheduler.config.set_alpha_to_one
    assert [m["epoch"] for m in trainer.train()] == [0, 1]


def test_tensorboard_gets_every_metric_and_the_evaluation_images(make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_config(run={"num_epochs": 2, "log_with": ["tensorboard"]}, sample={"num_steps": 3, "batch_size": 2},
                         train={"batch_size": 2})  # fmt: skip
    trainer = Trainer(config, pipeline=build_tiny_pipeline(0), progress=False)
    metrics = trainer.train()
    (events_dir,) = (trainer.run.path / "trackers").iterdir()
    events = EventAccumulator(str(events_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"reward_mean", "eval_reward_mean", "loss", "approx_kl", "clipfrac", "train_seconds"} <= scalars
    assert [e.step for e in events.Scalars("eval_reward_mean")] == [0, 1, 2]
    logged = [e.value for e in events.Scalars("reward_mean")]
    assert logged == pytest.approx([m["reward_mean"] for m in metrics[1:]], rel=1e-6)
    assert sorted({e.step for e in events.Images("eval_images")}) == [0, 1, 2]


def test_a_tracker_whose_package_is_missing_is_named_before_any_work(make_config, monkeypatch):
    import importlib.util

    from pxpo.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="'wandb' needs its package: pip install wandb"):
        Trainer(make_config(run={"log_with": ["wandb"]}), pipeline=build_tiny_pipeline(0), progress=False)


def test_prompt_fn_draws_each_groups_prompt_and_its_metadata_reaches_the_reward(make_config):
    seen = []

    def prompts(generator):
        i = int(torch.randint(3, (1,), generator=generator))
        return ["red taxi in traffic", "nature landscape", "portrait of a man on the beach"][i], {"index": i}

    def reward(images, prompts, metadata):
        seen.append(list(zip(prompts, metadata)))
        return -images[:, 2]

    records = []
    config = make_config(sample={"num_steps": 2, "batch_size": 4, "group_size": 2}, train={"batch_size": 4}, run={"num_epochs": 2})
    trainer = Trainer(config, reward_fn=reward, pipeline=build_tiny_pipeline(0), progress=False, prompt_fn=prompts,
                      callbacks=[lambda t, record: records.append((t, record["epoch"]))])  # fmt: skip
    trainer.train()
    training_calls = [call for call in seen if "index" in call[0][1]]  # (evaluation calls carry a seed instead)
    assert len(training_calls) == 2
    for call in training_calls:
        assert call[0][0] == call[1][0] and call[2][0] == call[3][0]  # groups of 2 share their prompt
        for prompt, meta in call:
            assert ["red taxi in traffic", "nature landscape", "portrait of a man on the beach"][meta["index"]] == prompt
            assert meta["epoch"] in (1, 2)
    assert records == [(trainer, 0), (trainer, 1), (trainer, 2)]


def test_a_bad_prompt_fn_is_named(make_config):
    trainer = Trainer(make_config(), pipeline=build_tiny_pipeline(0), progress=False, prompt_fn=lambda g: ("", {}))
    with pytest.raises(ValueError, match="prompt_fn returned \\(''"):
        trainer.sample(1)


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "optimizer.safetensors", "state.json"])
def test_resume_repairs_what_a_crash_left_and_falls_back_past_a_damaged_checkpoint(make_config, tmp_path, caplog, damaged):
    import logging
    import shutil

    from pxpo.models import trainable_state_dict

    config = make_config(run={"num_epochs": 2, "name": "crashy", "checkpoint_every": 1, "keep_checkpoints": 2})
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
        resumed = Trainer(make_config(run={"num_epochs": 2, "name": "crashy", "checkpoint_every": 1}), pipeline=build_tiny_pipeline(0),
                          run_dir=run.path, resume=True, progress=False)  # fmt: skip
    assert "epoch_0002 is damaged" in caplog.text
    assert resumed.start_epoch == 2  # from the intact epoch-1 checkpoint
    assert not [p for p in run.path.rglob(".*") if p.name != ".lock"]  # every leftover removed
    saved = load_file(run.lora / "pytorch_lora_weights.safetensors")  # lora/ rebuilt from the checkpoint resumed from
    state = trainable_state_dict(resumed.denoiser)
    assert saved and state.keys() == epoch_1.keys() and all(torch.equal(state[k], epoch_1[k]) for k in epoch_1)
    assert [m["epoch"] for m in resumed.train()] == [0, 1, 2]


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_run_with_one_line_telling_how_to_resume(tmp_path, signal_name):
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "long.toml"
    config.write_text(
        '[model]\npretrained = "tiny-random"\n[sample]\nnum_steps = 3\nbatch_size = 2\n[train]\nbatch_size = 2\n'
        f'[eval]\nseeds = [0]\n[run]\nnum_epochs = 1000\ncheckpoint_every = 1\noutput_dir = "{tmp_path / "runs"}"\nname = "long"\n'
    )
    process = subprocess.Popen([sys.executable, "-m", "pxpo.cli", "train", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "long" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    process.send_signal(getattr(signal, signal_name))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"Continue with: pxpo train --resume {tmp_path / 'runs' / 'long'}" in err


def test_a_signal_swallowed_by_a_finaliser_still_stops_the_run_quietly(capfd):
    """A signal whose KeyboardInterrupt is raised inside ``__del__`` (Python ignores it there) is not lost."""
    import os
    import signal
    import sys

    from pxpo import launch

    class SignalsWhileFinalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the finaliser

    handlers, hook = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)), sys.unraisablehook
    try:
        launch.stop_on_signals()
        launch.raise_if_stopped()  # nothing requested yet: no effect
        SignalsWhileFinalised()  # collected at once; its interrupt is swallowed by Python
        with pytest.raises(KeyboardInterrupt):
            launch.raise_if_stopped()
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        sys.unraisablehook = hook
        launch._stop_requested.clear()
    assert "Traceback" not in capfd.readouterr().err


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = tmp_path / "quick.toml"
    config.write_text(f'[model]\npretrained = "tiny-random"\n[run]\nnum_epochs = 1\noutput_dir = "{blocker}"\nname = "x"\n')
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pxpo train: error: ") and str(blocker) in err and "Traceback" not in err


def test_sample_refuses_bad_options_before_loading_and_a_run_without_weights(tmp_path, capsys):
    for args, message in [
        (["--num-steps", "0"], "--num-steps 0: expected at least 1"),
        (["--out", "x.xyz"], "--out 'x.xyz': expected a file name ending in .png"),
        (["--eta", "1.5"], "--eta 1.5: expected a number in (0, 1]"),
    ]:
        assert main(["sample", "tiny-random", "--prompt", "p", *args]) == 2
        assert message in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('[model]\npretrained = "tiny-random"\n')  # a run folder whose weights were never written
    assert main(["sample", str(run), "--prompt", "p", "--out", str(tmp_path / "x.png")]) == 2
    assert "has no trained weights (no lora/ nor unet/): nothing to sample" in capsys.readouterr().err


def test_sample_loads_a_run_s_base_model_as_it_was_trained_also_from_a_single_file(tmp_path, capsys, monkeypatch):
    import pxpo.models

    checkpoint, architecture = tmp_path / "model.safetensors", tmp_path / "architecture"
    checkpoint.write_bytes(b"")
    architecture.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(f'[model]\npretrained = "{checkpoint}"\nsingle_file_config = "{architecture}"\n')
    calls = []

    def load_pipeline(name, **kwargs):  # records how the base model is asked for, then stops the command
        calls.append((name, kwargs))
        raise ValueError("stop here")

    monkeypatch.setattr(pxpo.models, "load_pipeline", load_pipeline)
    assert main(["sample", str(run), "--prompt", "p", "--out", str(tmp_path / "x.png")]) == 2
    assert calls == [(str(checkpoint), {"single_file_config": str(architecture)})]


def test_training_settings_take_effect(make_config):
    """gradient accumulation, inner epochs with clipping engaged, and a fraction of the steps."""
    def run(**train):
        name = "settings-" + "-".join(f"{k}{v}" for k, v in train.items())
        config = make_config(sample={"num_steps": 4, "batch_size": 4}, train={"batch_size": 2, **train}, run={"num_epochs": 1, "name": name})
        trainer = Trainer(config, pipeline=build_tiny_pipeline(0), progress=False)
        steps, calls = [], []
        inner = trainer.optimizer.optimizer.step
        trainer.optimizer.optimizer.step = lambda *a, **k: (steps.append(1), inner(*a, **k))
        log_prob = trainer._log_prob
        trainer._log_prob = lambda *a, **k: (calls.append(len(a[2])), log_prob(*a, **k))[1]
        trajectories = trainer.sample(1)
        heatmaps = trainer.reward(trajectories.images, trajectories.prompts, [{}] * 4)
        from pxpo.trainer import Batch

        stats = trainer.update(Batch(trajectories, heatmaps, trainer.advantages(heatmaps, trajectories.prompts)), 1)
        return len(steps), sum(calls), stats

    assert run()[:2] == (2, 16)  # 2 batches of 2 samples, 4 steps each: 2 optimizer steps, 16 (sample, step) pairs
    assert run(gradient_accumulation_steps=2)[:2] == (1, 16)  # both batches summed into one step
    assert run(timestep_fraction=0.5)[:2] == (2, 8)  # half of the steps of each sample
    steps, pairs, stats = run(num_inner_epochs=2, learning_rate=0.1, clip_range=1e-6)
    assert (steps, pairs) == (4, 32) and stats["clipfrac"] > 0 and stats["approx_kl"] > 0  # the second pass is off-policy


def test_per_prompt_statistics_survive_a_resume(make_config, tmp_path):
    prompts = {"sample": {"prompts": ["red taxi in traffic", "nature landscape"], "num_steps": 2, "batch_size": 4},
               "train": {"batch_size": 4}, "advantage": {"normalization": "per_prompt", "per_prompt_min_count": 2}}  # fmt: skip
    straight = Trainer(make_config(**prompts, run={"num_epochs": 3, "name": "straight"}), pipeline=build_tiny_pipeline(0), progress=False)
    straight.train()
    Trainer(make_config(**prompts, run={"num_epochs": 2, "name": "cut"}), pipeline=build_tiny_pipeline(0), progress=False).train()
    resumed = Trainer(make_config(**prompts, run={"num_epochs": 3, "name": "cut"}), pipeline=build_tiny_pipeline(0),
                      run_dir=tmp_path / "runs" / "cut", resume=True, progress=False)  # fmt: skip
    assert resumed.tracker.state_dict() and resumed.start_epoch == 3
    resumed.train()
    a, b = resumed.tracker.state_dict(), straight.tracker.state_dict()
    assert a.keys() == b.keys()
    for prompt in a:
        torch.testing.assert_close(torch.tensor(a[prompt]), torch.tensor(b[prompt]), rtol=1e-5, atol=1e-7)


def test_full_denoiser_fine_tuning_writes_a_folder_that_pxpo_sample_loads(make_config, tmp_path):
    trainer = Trainer(make_config(model={"lora": False}, train={"learning_rate": 1e-4}, run={"num_epochs": 1}),
                      pipeline=build_tiny_pipeline(0), progress=False)  # fmt: skip
    trainer.train()
    assert (trainer.run.path / "unet" / "config.json").is_file() and not trainer.run.lora.exists()
    out = tmp_path / "full.png"
    assert main(["sample", str(trainer.run.path), "--prompt", "red taxi in traffic", "--num-steps", "2", "--out", str(out)]) == 0
    assert out.is_file()


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
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_a_rerun(make_config, caplog):
    import logging

    def broken(images, prompts, metadata):
        raise RuntimeError("the reward model crashed")

    config = make_config(run={"num_epochs": 2, "name": "again", "checkpoint_every": 2})
    with pytest.raises(RuntimeError, match="crashed"):
        Trainer(config, reward_fn=broken, pipeline=build_tiny_pipeline(0), progress=False).train()
    with caplog.at_level(logging.WARNING):
        again = Trainer(config, pipeline=build_tiny_pipeline(0), progress=False)  # the same run name
    assert "failed before its first checkpoint: starting afresh" in caplog.text
    assert [m["epoch"] for m in again.train()] == [0, 1, 2]
    with pytest.raises(ConfigError, match="already exists and is not empty"):  # a run with checkpoints is never cleared
        Trainer(config, pipeline=build_tiny_pipeline(0), progress=False)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_older_checkpoint_stays(tmp_path, capsys, monkeypatch):
    import errno

    import pxpo.run_folder

    config = tmp_path / "disk.toml"
    config.write_text(
        '[model]\npretrained = "tiny-random"\n[sample]\nnum_steps = 2\nbatch_size = 2\n[train]\nbatch_size = 2\n[eval]\nseeds = [0]\n'
        f'[run]\nnum_epochs = 2\ncheckpoint_every = 1\noutput_dir = "{tmp_path / "runs"}"\nname = "disk"\n'
    )
    real, calls = pxpo.run_folder.save_file, []

    def fill_up(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # the second checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(pxpo.run_folder, "save_file", fill_up)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    run = tmp_path / "runs" / "disk"
    assert [p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")] == ["epoch_0001"]
    load_file(run / "checkpoints" / "epoch_0001" / "trainable.safetensors")  # intact
