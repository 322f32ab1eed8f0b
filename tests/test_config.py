"""Every bad input stops the run before any work with a message naming the key, the value and what was expected."""

import pytest
import torch

from pxpo.config import ConfigError, apply_overrides, load_config, validate_config
from pxpo.families.flow import FlowMatchingFamily
from pxpo.rewards import RewardError
from pxpo.trainer import Trainer


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": {"lerning_rate": 1e-3}}, "train.lerning_rate: unknown key; expected one of algorithm, learning_rate"),
        ({"sampel": {}}, "sampel: unknown key; expected one of model, sample"),
        ({"sample": {"num_steps": "20"}}, "sample.num_steps: Input should be a valid integer (got '20')"),
        ({"sample": {"eta": 0.0}}, "sample.eta: Input should be greater than 0 (got 0.0)"),
        ({"sample": {"eta": 1.5}}, "sample.eta: Input should be less than or equal to 1 (got 1.5)"),
        ({"sample": {"batch_size": 0}}, "sample.batch_size: Input should be greater than 0 (got 0)"),
        ({"sample": {"height": -64}}, "sample.height: Input should be greater than 0 (got -64)"),
        ({"train": {"clip_range": 0.0}}, "train.clip_range: Input should be greater than 0 (got 0.0)"),
        ({"train": {"algorithm": "grpo"}}, "train.algorithm: unknown algorithm 'grpo': expected one of awm, ddpo, pxawm, pxpo (got 'grpo')"),
        ({"train": {"timestep_fraction": 1.5}}, "train.timestep_fraction: Input should be less than or equal to 1 (got 1.5)"),
        ({"model": {"pretrained": "./no/such/model"}}, "model.pretrained: './no/such/model' is not an existing folder"),
        ({"sample": {"prompts": []}}, "sample.prompts: List should have at least 1 item"),
        ({"train": {"batch_size": 3}}, "train.batch_size = 3 must divide the 8 samples per epoch"),
        ({"train": {"timesteps_per_forward": 30}}, "train.timesteps_per_forward = 30 is more than the 20 steps trained per sample"),
    ],
)
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    assert message in str(info.value)


def test_toml_file_overrides_and_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nalgorithm = "ddpo"\n[sample]\nprompts = ["a", "b"]\n')
    config = load_config(path, ["train.learning_rate=2e-4", 'sample.prompts=["c"]', "model.pretrained=tiny-random"])
    assert config.train.algorithm == "ddpo" and config.train.learning_rate == 2e-4 and config.sample.prompts == ["c"]
    assert config.train.clip_range == 1e-4  # DDPO's default is resolved into the saved config
    saved = tmp_path / "saved.toml"
    saved.write_text(config.to_toml())
    assert load_config(saved) == config


def test_file_and_override_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides({}, ["train.learning_rate"])


def shape_reward(images, prompts, metadata):
    return torch.zeros(images.shape[0], 8, 8)


def nan_reward(images, prompts, metadata):
    out = -images[:, 2].clone()
    out[0, 0, 0] = float("nan")
    return out


@pytest.mark.slow  # builds a Trainer and starts training
@pytest.mark.parametrize(
    ("reward", "message"),
    [(shape_reward, r"returned shape \[2, 8, 8\]: expected \[2, 64, 64\]"), (nan_reward, "1 non-finite values")],
)
def test_bad_reward_stops_at_the_first_call(make_config, tiny_pipe, reward, message):
    config = make_config(reward={"name": "my_reward"})
    trainer = Trainer(config, reward_fn=reward, pipeline=tiny_pipe, progress=False)
    with pytest.raises(RewardError, match=message) as info:
        trainer.train()
    assert f"'injected:{reward.__module__}.{reward.__qualname__}'" in str(info.value)  # the callable's name, not the config's
    assert trainer.run.read_metrics() == []  # nothing was trained or logged


@pytest.mark.slow  # trains
def test_injected_reward_is_recorded_and_a_resume_cannot_change_it(make_config, tmp_path):
    from pxpo.world.architecture import build_tiny_pipeline

    def first_reward(images, prompts, metadata):
        return -images[:, 2]

    def second_reward(images, prompts, metadata):
        return images[:, 0]

    config = make_config(sample={"num_steps": 2, "batch_size": 2}, train={"batch_size": 2}, eval={"seeds": [0]},
                         run={"num_epochs": 1, "name": "injected"})  # fmt: skip
    trainer = Trainer(config, reward_fn=first_reward, pipeline=build_tiny_pipeline(0), progress=False)
    trainer.train()
    saved = load_config(trainer.run.config)
    assert saved.reward.name == f"injected:{__name__}.test_injected_reward_is_recorded_and_a_resume_cannot_change_it.<locals>.first_reward"
    with pytest.raises(ConfigError, match="this run was trained with reward 'injected:.*first_reward'; reward_fn is .*second_reward"):
        Trainer(saved, reward_fn=second_reward, pipeline=build_tiny_pipeline(0), run_dir=trainer.run.path, resume=True, progress=False)
    with pytest.raises(RewardError, match="was a Python callable passed as Trainer\\(reward_fn=...\\)"):
        Trainer(saved, pipeline=build_tiny_pipeline(0), run_dir=trainer.run.path, resume=True, progress=False)
    again = Trainer(saved, reward_fn=first_reward, pipeline=build_tiny_pipeline(0), run_dir=trainer.run.path, resume=True, progress=False)
    assert again.start_epoch == 2


def test_unknown_reward_stops_before_any_work(make_config):
    config = make_config(reward={"name": "hair_penalty"})
    with pytest.raises(RewardError, match="'hair_penalty': not a registered reward"):
        Trainer(config, progress=False)


def test_mixed_precision_without_gpu_is_refused(make_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # (on a machine with a GPU too)
    with pytest.raises(ConfigError, match="model.mixed_precision = 'fp16' needs a GPU"):
        Trainer(make_config(model={"mixed_precision": "fp16"}), progress=False)


def test_config_reference_is_current():
    from pathlib import Path

    from pxpo.config import reference_markdown

    docs = Path(__file__).parents[1] / "docs" / "config.md"
    assert docs.read_text() == reference_markdown(), "regenerate with: python -m pxpo.config > docs/config.md"


def test_every_shipped_config_validates_and_fits_its_model_family():
    """The hub configs cannot run here: check their structure against a tiny pipeline of the same class."""
    from pathlib import Path

    from pxpo.families import family_for
    from pxpo.world.architecture import build_tiny_flux_pipeline, build_tiny_pipeline, build_tiny_sd3_pipeline

    builders = {  # hub id prefix -> the tiny pipeline of the same class (the longest matching prefix wins)
        "stabilityai/": build_tiny_sd3_pipeline,
        "black-forest-labs/": build_tiny_flux_pipeline,
        "CompVis/": build_tiny_pipeline,
        "stabilityai/stable-diffusion-xl": lambda: __import__("pxpo.world.tiny_sdxl", fromlist=["_"]).build_tiny_sdxl_pipeline(),
        "Qwen/Qwen-Image": lambda: __import__("pxpo.world.tiny_qwen_image", fromlist=["_"]).build_tiny_qwen_image_pipeline(),
        "black-forest-labs/FLUX.2-klein":
            lambda: __import__("pxpo.world.tiny_flux2", fromlist=["_"]).build_tiny_flux2_klein_pipeline(),
        "black-forest-labs/FLUX.2-dev": lambda: __import__("pxpo.world.tiny_flux2", fromlist=["_"]).build_tiny_flux2_pipeline(),
        "Tongyi-MAI/Z-Image": lambda: __import__("pxpo.world.tiny_z_image", fromlist=["_"]).build_tiny_z_image_pipeline(),
    }
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    assert len(configs) >= 12
    for path in configs:
        config = load_config(path)
        builder = next((b for prefix, b in sorted(builders.items(), key=lambda item: -len(item[0]))
                        if config.model.pretrained.startswith(prefix)), None)  # fmt: skip
        if builder is None:
            assert config.model.pretrained.startswith("pxpo-tiny"), path
            continue
        family = family_for(builder())
        family.latent_shape(config.sample.height, config.sample.width)  # raises for a size the family cannot take
        assert family.policy_noise(config.sample.eta, config.sample.noise_level) > 0
        if isinstance(family, FlowMatchingFamily):
            assert config.sample.group_size > 1 and config.advantage.normalization == "group_location", path


def test_a_missing_local_folder_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match="'runs/typo': there is no folder of that name in 'runs'"):
        validate_config({"model": {"pretrained": "runs/typo"}})
    assert validate_config({"model": {"pretrained": "org/model"}}).model.pretrained == "org/model"  # a hub id


def test_top_level_api():
    import pxpo
    from pxpo.trainer import Trainer as TrainerClass

    assert pxpo.Trainer is TrainerClass and pxpo.load_config is load_config  # (every export: test_imports.py)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pxpo.nope


def test_single_file_checkpoints_must_be_safetensors_and_exist(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    with pytest.raises(ConfigError, match="single-file checkpoints only as .safetensors \\(a .ckpt file is a pickle\\)"):
        validate_config({"model": {"pretrained": str(tmp_path / "model.ckpt")}})
    with pytest.raises(ConfigError, match="model.safetensors': no such file"):
        validate_config({"model": {"pretrained": str(tmp_path / "model.safetensors")}})
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert validate_config({"model": {"pretrained": str(tmp_path / "model.safetensors")}}).model.pretrained.endswith(".safetensors")


def test_a_single_file_that_is_not_a_checkpoint_gets_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    from pxpo.models import load_pipeline
    from pxpo.world import WEIGHTS

    save_file({"not_a_unet": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="cannot load a StableDiffusionPipeline from the single file"):
        load_pipeline(str(tmp_path / "model.safetensors"), single_file_config=str(WEIGHTS / "pxpo-tiny"))


def test_a_launch_whose_process_count_accelerate_does_not_see_is_refused(make_config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what `accelerate launch --multi_gpu` without a GPU backend leaves each process
    with pytest.raises(ConfigError, match="started 2 processes \\(WORLD_SIZE\\) but accelerate sees 1: each would train alone"):
        Trainer(make_config(), progress=False)


def test_example_accelerate_configs_parse():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    files = sorted((Path(__file__).parents[1] / "configs" / "accelerate").glob("*.yaml"))
    assert {f.stem for f in files} == {"ddp", "multi_node_ddp", "deepspeed_zero2", "fsdp"}
    for path in files:
        config = load_config_from_file(str(path))
        assert config.num_processes > 1 and config.mixed_precision == "bf16", path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sample": {"height": 64}}, "sample.height = 64, sample.width = None: set both or neither"),
        ({"train": {"learning_rate": float("inf")}}, "train.learning_rate: Input should be a finite number"),
        ({"run": {"seed": -1}}, "run.seed: Input should be greater than or equal to 0"),
        ({"advantage": {"normalization": "group"}}, "needs sample.group_size >= 2"),
        ({"train": {"kl_coef": 0.1}, "model": {"lora": False}}, "train.kl_coef = 0.1 needs model.lora = true"),
    ],
)
def test_settings_that_used_to_fail_late_are_refused_up_front(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)").replace(".", "\\.")):
        validate_config(data)


def test_a_tracker_whose_package_is_missing_is_named_before_any_work(make_config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="'wandb' needs its package: pip install wandb"):
        Trainer(make_config(run={"log_with": ["wandb"]}), progress=False)
