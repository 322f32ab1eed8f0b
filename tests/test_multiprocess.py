"""Two processes on the CPU (gloo), as `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2` runs them."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_one_coherent_run_with_equal_weights(tmp_path):
    config = tmp_path / "two.toml"
    config.write_text(
        '[model]\npretrained = "tiny-random"\n[sample]\nnum_steps = 3\nbatch_size = 2\n[train]\nbatch_size = 2\nlearning_rate = 1e-2\n'
        f'[eval]\nseeds = [0, 1]\n[run]\nnum_epochs = 2\noutput_dir = "{tmp_path / "runs"}"\n'
    )  # no run.name: the main process's clock names the folder for both ranks
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(free_port()), str(HERE / "two_process_worker.py"), str(config), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launcher, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()  # one run folder
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1, 2]  # each epoch logged once
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key  # DDP keeps the ranks' weights identical
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_a_multi_process_launch_without_a_backend_is_refused(tmp_path):
    config = tmp_path / "two.toml"
    config.write_text(f'[model]\npretrained = "tiny-random"\n[run]\nnum_epochs = 1\noutput_dir = "{tmp_path / "runs"}"\n')
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(free_port()), "-m", "pxpo.cli", "train", str(config)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    done = subprocess.run(launcher, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "started 2 processes (WORLD_SIZE) but accelerate sees 1" in done.stderr + done.stdout
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing trained, no folder left


def test_workers_stop_within_seconds_when_their_launcher_is_killed(tmp_path):
    import signal
    import time

    config = tmp_path / "long.toml"
    config.write_text(
        '[model]\npretrained = "tiny-random"\n[sample]\nnum_steps = 3\nbatch_size = 2\n[train]\nbatch_size = 2\n'
        f'[eval]\nseeds = [0]\n[run]\nnum_epochs = 1000\noutput_dir = "{tmp_path / "runs"}"\nname = "orphans"\n'
    )
    launcher = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
         str(free_port()), "-m", "pxpo.cli", "train", str(config)],
        env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    metrics = tmp_path / "runs" / "orphans" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()]
    assert len(workers) == 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    killed_at = time.time()

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    while any(alive(pid) for pid in workers) and time.time() < killed_at + 30:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers), "workers trained on without their launcher"
    assert time.time() - killed_at < 15


def test_a_two_process_update_equals_the_one_process_update_over_the_union_of_the_data(tmp_path):
    from safetensors import safe_open

    from pxpo.config import load_config
    from pxpo.models import trainable_state_dict
    from pxpo.sampling import Conditioning, Trajectories
    from pxpo.trainer import Batch, Trainer

    def write(name, batch):
        path = tmp_path / f"{name}.toml"
        path.write_text(
            f'[model]\npretrained = "tiny-random"\n[sample]\nnum_steps = 3\nbatch_size = {batch}\n'
            f'[train]\nbatch_size = {batch}\nlearning_rate = 1e-2\ntimesteps_per_forward = 3\nadam_epsilon = 1e-3\n'
            f'[eval]\nseeds = [0]\n[run]\nnum_epochs = 1\noutput_dir = "{tmp_path / "runs"}"\nname = "{name}"\n'
        )
        return path

    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                str(free_port()), str(HERE / "two_process_update.py"), str(write("two", 2)), str(tmp_path)]  # fmt: skip
    done = subprocess.run(launcher, env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    parts, prompts = [load_file(tmp_path / f"batch{r}.safetensors") for r in (0, 1)], []
    for r in (0, 1):
        with safe_open(str(tmp_path / f"batch{r}.safetensors"), "pt") as f:
            prompts += json.loads(f.metadata()["prompts"])
    union = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "timesteps"}
    trajectories = Trajectories(
        prompts=prompts,
        conditioning=Conditioning({k.split(".", 1)[1]: v for k, v in union.items() if k.startswith("conditioning.")}),
        timesteps=parts[0]["timesteps"], latents=union["latents"], log_probs=union["log_probs"], images=union["images"],
    )  # fmt: skip
    one = Trainer(load_config(write("one", 4)), progress=False)  # the same LoRA initialisation (run.seed)
    # the ranks normalised their advantages with statistics over both ranks' samples: as one process does over the union
    torch.testing.assert_close(one.advantages(union["heatmaps"], prompts), union["advantages"], rtol=1e-5, atol=1e-6)
    before = {k: v.clone() for k, v in trainable_state_dict(one.denoiser).items()}
    one.update(Batch(trajectories, union["heatmaps"], union["advantages"]), 1)
    after = trainable_state_dict(one.denoiser)
    rank0, rank1 = load_file(tmp_path / "after0.safetensors"), load_file(tmp_path / "after1.safetensors")
    assert union["latents"].shape[0] == 4 and union["advantages"].abs().sum() > 0
    assert any(not torch.equal(before[k], after[k]) for k in after)  # the update moved the weights
    for key, value in after.items():
        assert torch.equal(rank0[key], rank1[key]), key
        # float rounding: the all-reduce and batches of 2 against 4 sum in other orders. adam_epsilon = 1e-3 keeps Adam's
        # first step (lr g / (|g| + eps), up to 1e-2 here) from blowing up the rounding of gradients near zero; a wrong
        # normalisation or a sum where a mean belongs would be off by a good part of a step, far above 1e-5
        torch.testing.assert_close(rank0[key], value, rtol=1e-3, atol=1e-5)


def test_two_process_kill_9_then_resume_gives_the_uninterrupted_runs_lora_exactly(tmp_path, quick_toml):
    import signal
    import time

    def config(name):
        return quick_toml(name, run={"num_epochs": 4, "checkpoint_every": 1})

    def launch(*args):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                   str(free_port()), "-m", "pxpo.cli", "train", *args]  # fmt: skip
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    straight = launch(config("straight"))
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-2000:]
    assert out.count("run folder:") == 1  # the main process prints the summary, once
    victim = launch(config("killed"))  # (its pipes stay unread: it is killed long before they fill)
    metrics = tmp_path / "runs" / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(victim.pid)], capture_output=True, text=True).stdout.split()]
    time.sleep(0.3)  # inside epoch 3
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for pid in workers:  # the workers stop by themselves (their launcher is gone); wait for them to let go of the folder
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
    resumed = launch("--resume", str(tmp_path / "runs" / "killed"))
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    a = load_file(tmp_path / "runs" / "straight" / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "runs" / "killed" / "lora" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def test_human_feedback_refuses_several_processes(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                str(free_port()), "-m", "pxpo.cli", "train", str(HERE.parent / "configs" / "human_sim_more_trees.toml"),
                "--set", f"run.output_dir={str(tmp_path)!r}"]  # fmt: skip
    done = subprocess.run(launcher, env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode != 0
    assert "human feedback (single-image mode, the folder protocol) runs in one process; this launch has 2" in done.stderr


def test_two_processes_give_exactly_the_group_advantages_of_one_process_over_the_union(tmp_path):
    """GRPO groups of 4 over 2 processes x 3 sampling batches of 2: the middle group spans both processes and two batches.
    Each rank's "group" and "group_location" advantages are exactly those one process computes over the union of both
    ranks' samples in the global order, and every group's prompt is the same on both ranks."""
    from safetensors import safe_open

    from pxpo.config import load_config
    from pxpo.trainer import Trainer

    def write(name, batches):
        path = tmp_path / f"{name}.toml"
        path.write_text(
            f'[model]\npretrained = "tiny-random"\n[sample]\nnum_steps = 2\nbatch_size = 2\nnum_batches_per_epoch = {batches}\n'
            'group_size = 4\nprompts = ["red taxi in traffic", "nature landscape", "a snowy owl"]\n[train]\nbatch_size = 2\n'
            f'[advantage]\nnormalization = "group"\n[eval]\nseeds = [0]\n'
            f'[run]\nnum_epochs = 1\noutput_dir = "{tmp_path / "runs"}"\nname = "{name}"\n'
        )
        return path

    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                str(free_port()), str(HERE / "two_process_groups.py"), str(write("two", 3)), str(tmp_path)]  # fmt: skip
    done = subprocess.run(launcher, env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    parts, prompts = [load_file(tmp_path / f"groups{r}.safetensors") for r in (0, 1)], []
    for r in (0, 1):
        with safe_open(str(tmp_path / f"groups{r}.safetensors"), "pt") as f:
            prompts += json.loads(f.metadata()["prompts"])
    union = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    assert union["groups"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]  # group 1: rank 0's last batch, rank 1's first
    assert all(len({prompts[i] for i in range(12) if union["groups"][i] == g}) == 1 for g in range(3))
    one = Trainer(load_config(write("one", 6)), progress=False)  # one process sampling the same 12 in 6 batches
    assert [prompt for prompt, _ in one.schedule.draw_groups(1)] == prompts[::4]  # the same group prompts
    for normalization in ("group", "group_location"):
        one.config.advantage.normalization = normalization
        expected = one.advantages(union["heatmaps"], prompts, union["groups"])
        assert expected.abs().sum() > 0
        assert torch.equal(union[normalization], expected), normalization  # exactly: the same gathered rows, the same maths
