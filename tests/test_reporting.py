"""What a person reads during and after a run: epoch lines, the summary, the evolution grid's labels, run names."""

import json

import pytest
import torch
from PIL import Image

import pxpo.reporting
from pxpo.config import validate_config
from pxpo.launch import new_run_path
from pxpo.reporting import (
    Reporter, constant_diagnostics, epoch_legend, epoch_line, figure_title, nothing_left_message, reward_change, trackers_line,
)  # fmt: skip
from pxpo.run_folder import RunFolder

RECORD = {
    "epoch": 3, "reward_mean": -0.33621, "reward_std": 0.04104, "approx_kl": 0.0, "clipfrac": 0.0, "loss": 1e-9, "grad_norm": 0.5,
    "sample_seconds": 6.0, "reward_seconds": 0.3, "train_seconds": 5.0, "eval_seconds": 1.0,
    "eval_reward_mean": -0.30112, "eval_reward_std": 0.05213, "eval_rewards": [-0.3, -0.2],
}  # fmt: skip


def config(**sections):
    data = {"sample": {"batch_size": 8}, "train": {"batch_size": 8}, "eval": {"seeds": [0, 1]}, "run": {"num_epochs": 8}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return validate_config(data)


def test_an_epoch_line_is_read_by_a_person_not_a_python_dict():
    line = epoch_line(RECORD, 8, hidden=constant_diagnostics(config()))
    assert line == "epoch 3/8  reward -0.336 ± 0.041  eval -0.301 ± 0.052  (12.3 s)"
    assert "{" not in line and "approx_kl" not in line and "clipfrac" not in line


def test_what_can_move_is_shown_kl_terms_and_off_policy_diagnostics():
    record = {**RECORD, "kl": 0.0123, "approx_kl": 2.5e-6, "clipfrac": 0.031, "reward_term_hair": -0.0123}
    several_steps = config(train={"batch_size": 4})  # two optimizer steps per epoch: the second is off-policy
    assert constant_diagnostics(several_steps) == ()
    line = epoch_line(record, 8, hidden=constant_diagnostics(several_steps))
    assert "(terms: hair -0.0123)" in line and "kl to base 0.0123" in line
    assert "approx_kl 2.5e-06" in line and "clipfrac 0.031" in line
    assert constant_diagnostics(config(train={"num_inner_epochs": 2})) == ()
    assert constant_diagnostics(config(train={"batch_size": 4, "gradient_accumulation_steps": 2})) == ("approx_kl", "clipfrac")


def test_the_base_models_line_and_small_rewards():
    assert epoch_line({"epoch": 0, "eval_reward_mean": -0.395, "eval_reward_std": 0.12, "eval_seconds": 3.14}, 8) == (
        "epoch 0/8  eval -0.395 ± 0.120  (base model, 3.1 s)"
    )
    small = {"epoch": 1, "reward_mean": -0.01734, "reward_std": 0.00412}
    assert epoch_line(small, 16) == "epoch 1/16  reward -0.0173 ± 0.0041"
    assert epoch_line(small, 1_000_000) == "epoch 1  reward -0.0173 ± 0.0041"  # an app session: no planned length


def test_the_legend_says_what_the_numbers_are_and_why_approx_kl_is_not_shown():
    text = epoch_legend(config())
    assert "mean pixel reward of the epoch's training images ± std over images" in text and "over 2 fixed seeds" in text
    assert text.endswith("(approx_kl, clipfrac: 0 with one optimizer step per epoch, not shown)")
    assert "approx_kl" not in epoch_legend(config(train={"num_inner_epochs": 2}))


def test_the_summary_keeps_the_std_the_readme_quotes():
    metrics = [{"epoch": 0, "eval_reward_mean": -0.3951, "eval_reward_std": 0.1204}, {**RECORD, "epoch": 8, "eval_reward_mean": -0.2913,
               "eval_reward_std": 0.1049}]  # fmt: skip
    assert reward_change(metrics) == "eval reward: -0.395 ± 0.120 (epoch 0) -> -0.291 ± 0.105 (epoch 8)"
    assert reward_change([{"epoch": 0}]) is None


def test_the_summary_names_the_trackers_folder_and_the_tensorboard_command(tmp_path):
    run = tmp_path / "run"
    assert trackers_line(run, []) is None
    assert trackers_line(run, ["tensorboard"]) == f"trackers (tensorboard): {run}/trackers/  (tensorboard --logdir {run}/trackers)"
    assert "tensorboard --logdir" not in trackers_line(run, ["wandb"])


def test_a_finished_run_says_to_raise_num_epochs(tmp_path):
    text = nothing_left_message(tmp_path / "run", 8, 8)
    assert "nothing to train" in text and "run.num_epochs = 8" in text
    assert f"raise run.num_epochs above 8, e.g. pxpo train --resume {tmp_path / 'run'} --set run.num_epochs=16" in text


def test_titles_name_algorithm_reward_and_model():
    assert figure_title(config(train={"algorithm": "ddpo"}), "http") == "DDPO, reward http, model pxpo-tiny"


def test_the_evolution_grid_shows_every_epoch_each_images_reward_and_how_many_seeds(tmp_path, monkeypatch):
    cfg = config(eval={"seeds": list(range(16))})
    run = RunFolder(tmp_path / "run")
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    metrics = [{"epoch": e, "eval_rewards": [e + s / 100 for s in range(16)]} for e in range(9)]  # an 8-epoch run
    drawn = {}
    monkeypatch.setattr(pxpo.reporting, "plot_image_grid", lambda grid, rows, columns, path, title, captions: drawn.update(
        grid=grid, rows=rows, columns=columns, title=title, captions=captions))  # fmt: skip
    Reporter(cfg, run, None, "blue_penalty").plot_evolution(metrics)
    assert drawn["columns"] == [f"epoch {e}" for e in range(9)]  # epoch 4 too
    assert drawn["rows"] == [f"seed {s}" for s in range(8)]
    assert drawn["captions"][1][4] == "4.010"  # seed 1 after epoch 4
    assert drawn["title"].startswith("PXPO, reward blue_penalty, model pxpo-tiny: red taxi in traffic\n")
    assert "8 of 16 seeds" in drawn["title"] and "under each image: its mean pixel reward" in drawn["title"]

    long_run = [{"epoch": e} for e in range(21)]
    Reporter(config(), run, None, "blue_penalty").plot_evolution(long_run)
    assert drawn["columns"] == [f"epoch {e}" for e in range(0, 21, 2)]
    assert "epochs 0, 2, 4, ..., 20 of 0-20" in drawn["title"] and "seeds" not in drawn["title"]
    assert drawn["captions"] == [[""] * 11] * 2  # runs from before eval_rewards were recorded: no captions


def test_evaluation_records_each_seeds_reward(tmp_path):
    cfg = config(eval={"seeds": [3, 5]})
    images = torch.stack([torch.full((3, 8, 8), 0.25), torch.full((3, 8, 8), 0.75)])
    reporter = Reporter(cfg, RunFolder(tmp_path / "run"), lambda images, prompts, metadata: -images[:, 2], "blue_penalty")
    record = reporter.evaluation(0, images)
    assert record["eval_rewards"] == [-0.25, -0.75]
    assert record["eval_reward_mean"] == pytest.approx(-0.5) and record["eval_reward_std"] == pytest.approx(0.25)
    json.dumps(record)  # a metrics.jsonl line


def test_a_run_of_another_algorithm_is_named_after_it(tmp_path):
    out = {"output_dir": str(tmp_path)}
    assert new_run_path(config(run=out), "blue_penalty").name.startswith("blue_penalty-2")
    assert new_run_path(config(run=out, train={"algorithm": "ddpo"}), "blue_penalty").name.startswith("blue_penalty-ddpo-2")
    assert new_run_path(config(run=out, train={"algorithm": "ddpo"}), "ddpo_blue").name.startswith("ddpo_blue-2")
    assert new_run_path(config(run={**out, "name": "mine"}, train={"algorithm": "ddpo"}), "blue_penalty").name == "mine"
