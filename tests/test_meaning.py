"""No silent change of meaning: a resumed run refuses settings that change what it is; numbers are finite and
in range before any work; inputs that used to fail late or obscurely fail at once, naming what is wrong."""

import pytest

from pxpo.config import ConfigError, check_resume, load_config, validate_config


def _saved(**sections):
    data = {"run": {"num_epochs": 2}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return validate_config(data)


@pytest.mark.parametrize(
    "change",
    [
        {"train": {"algorithm": "ddpo"}},
        {"model": {"pretrained": "pxpo-tiny-flow"}},
        {"model": {"lora_rank": 8}},
        {"reward": {"name": "segmentation"}},
        {"train": {"learning_rate": 1e-2}},
    ],
)
def test_a_resume_that_changes_what_the_run_means_is_refused_naming_the_key_and_both_values(change):
    section, values = next(iter(change.items()))
    key, value = next(iter(values.items()))
    with pytest.raises(ConfigError) as error:
        check_resume(_saved(), _saved(**change))
    message = str(error.value)
    assert f"{section}.{key} = {value!r}" in message
    assert f"(the run has {_saved().model_dump(mode='json')[section][key]!r})" in message


def test_a_resume_may_extend_or_observe_the_run():
    check_resume(_saved(), _saved(run={"num_epochs": 9, "log_with": ["tensorboard"], "checkpoint_every": 2, "keep_checkpoints": 5}))


@pytest.mark.slow
def test_resume_with_another_algorithm_writes_nothing(tmp_path, quick_toml):
    """Through the command line: refused before the run folder's config.toml is touched, and a plain resume still works."""
    from pxpo.cli import main

    runs = tmp_path / "runs"
    assert main(["train", quick_toml("r", run={"num_epochs": 1}), "--no-progress"]) == 0
    config = (runs / "r" / "config.toml").read_text()
    assert main(["train", "--resume", str(runs / "r"), "--set", "train.algorithm=ddpo", "--no-progress"]) == 2
    assert (runs / "r" / "config.toml").read_text() == config


@pytest.mark.parametrize("key", ["train.kl_coef", "sample.noise_level", "sample.guidance_scale", "train.adam_weight_decay", "model.lora_alpha"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_non_finite_numbers_are_refused_before_any_work(key, value):
    with pytest.raises(ConfigError, match=rf"{key}: Input should be a finite number"):
        load_config(None, [f"{key}={value}"])


def test_a_noise_level_that_blows_the_sde_up_is_refused():
    with pytest.raises(ConfigError, match=r"sample.noise_level: Input should be less than or equal to 2 \(got 1000000.0\)"):
        load_config(None, ["sample.noise_level=1e6"])


def test_inf_is_still_allowed_where_it_means_off():
    config = load_config(None, ["train.adv_clip_max=inf", "train.max_grad_norm=inf"])
    assert config.train.adv_clip_max == config.train.max_grad_norm == float("inf")


def test_empty_reward_terms_do_not_fall_back_to_the_default_reward():
    with pytest.raises(ConfigError, match="reward.terms is empty"):
        load_config(None, ["reward.terms=[]"])


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[sample]\nprompts = ["caf\xe9"]\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"config file '{path}' is not UTF-8 text"):
        load_config(path)


def test_a_prompt_fn_returning_a_bare_string_is_named():
    from pxpo.schedule import GroupedPrompts

    schedule = GroupedPrompts(_saved(), None, (4, 16, 16), 0, "cpu", prompt_fn=lambda generator: "red taxi")
    import torch

    with pytest.raises(ValueError, match=r"prompt_fn returned 'red taxi': expected a tuple \(a non-empty prompt, a dict of metadata\)"):
        schedule.draw_prompt(torch.Generator())


def test_a_stopped_run_says_which_epoch_a_resume_starts_from(tmp_path):
    from pxpo.cli import _resume_point
    from pxpo.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    assert _resume_point(run) == f"no checkpoint yet: a resume starts at epoch 1. Continue with: pxpo train --resume {run.path}"
    for epoch in (4, 8):
        (run.checkpoint_path(epoch)).mkdir(parents=True)
        (run.checkpoint_path(epoch) / "state.json").write_text("{}")
    (run.checkpoint_path(12)).mkdir()  # half-written: no state.json, not a checkpoint
    assert _resume_point(run).startswith("the last checkpoint is epoch 8: a resume starts at epoch 9. ")


@pytest.mark.slow
def test_sampling_a_run_whose_lora_fits_another_model_is_refused(tmp_path, quick_toml, capsys):
    """A LoRA that matches no layer of the base model loads nothing in diffusers (a notice only): refused, not the base
    model's images under the run's name."""
    from pxpo.cli import main

    assert main(["train", quick_toml("sd", run={"num_epochs": 1}), "--no-progress"]) == 0
    run = tmp_path / "runs" / "sd"
    (run / "config.toml").write_text((run / "config.toml").read_text().replace('"tiny-random"', '"tiny-random-sd3"'))
    capsys.readouterr()
    assert main(["sample", str(run), "--prompt", "p", "--out", str(tmp_path / "x.png")]) == 2
    assert "fits no layer of 'tiny-random-sd3' (StableDiffusion3Pipeline): it was trained on another model" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_a_run_stopped_by_its_reward_names_the_run_folder_and_where_a_resume_starts(tmp_path, quick_toml, capsys):
    from pxpo.cli import main

    reward = {"name": "http", "kwargs": {"url": "http://127.0.0.1:9", "retries": 0, "timeout": 2.0}}  # nothing listens there
    assert main(["train", quick_toml("lost", reward=reward), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "could not be reached" in err
    assert f"no checkpoint yet: a resume starts at epoch 1. Continue with: pxpo train --resume {tmp_path / 'runs' / 'lost'}" in err
