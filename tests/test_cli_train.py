"""``pxpo train`` on the command line: a run, its log, and errors in one line."""

import re

import pytest

from pxpo.cli import main


@pytest.mark.slow  # trains
def test_cli_train_sample_and_errors(tmp_path, quick_toml, capsys):
    config = quick_toml("cli", model={"pretrained": "pxpo-tiny"}, sample={"num_steps": 3, "batch_size": 2}, run={"num_epochs": 1})
    assert main(["train", config, "--no-progress", "--set", "train.learning_rate=1e-3"]) == 0
    run = tmp_path / "runs" / "cli"
    assert "learning_rate = 0.001" in (run / "config.toml").read_text()
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "--prompt", "red taxi in traffic", "--seed", "0", "1", "--num-steps", "3", "--out", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size == (128, 64)  # two seeds side by side

    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", 'run.log_with=["tensorboard"]']) == 0  # finished: nothing to train
    out = capsys.readouterr().out
    assert out.startswith(f"pxpo train: nothing to train: {run} has trained 1 epoch and run.num_epochs = 1. To train longer, raise "
                          f"run.num_epochs above 1, e.g. pxpo train --resume {run} --set run.num_epochs=2\n")  # fmt: skip
    assert re.search(r"^eval reward: -?\d\.\d{3,} ± \d\.\d{3,} \(epoch 0\) -> -?\d\.\d{3,} ± \d\.\d{3,} \(epoch 1\)$", out, re.M), out
    assert f"trackers (tensorboard): {run}/trackers/  (tensorboard --logdir {run}/trackers)" in out

    assert main(["train", config, "--set", "sample.eta=0"]) == 2
    assert "sample.eta: Input should be greater than 0 (got 0)" in capsys.readouterr().err
    assert main(["train", config]) == 2  # the run folder exists: refuse to overwrite it
    assert "already exists" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    assert "--resume RUN" in capsys.readouterr().out


@pytest.mark.slow  # trains in a subprocess
def test_cli_output_piped_to_a_file_has_plain_lines_and_no_bar_frames(tmp_path, quick_toml):
    import subprocess
    import sys

    config = quick_toml("piped")
    log = tmp_path / "log.txt"
    with log.open("w") as file:  # progress bars on, but the output is a file
        done = subprocess.run([sys.executable, "-m", "pxpo.cli", "train", config], stdout=file, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-2000:]
    assert "\r" not in text and "\x1b[" not in text, text[:500]
    assert re.search(r"^epoch 1/2  reward -?\d\.\d+ ± \d\.\d+  eval -?\d\.\d+ ± \d\.\d+  \(\d+\.\d s\)$", text, re.M), text
    assert "epoch 2/2  reward" in text and "epoch 1 {" not in text
    assert "run folder:" in text and "reward_curve.png" in text and "evolution.png" in text
    assert "requires torchvision" not in text


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, quick_toml, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = quick_toml("x", run={"num_epochs": 1, "output_dir": str(blocker)})
    assert main(["train", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pxpo train: error: ") and str(blocker) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
