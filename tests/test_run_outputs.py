"""What a run leaves: the run folder's files, weights that diffusers loads, and the trackers' logs."""

import json

import pytest
import torch

from pxpo.cli import main
from pxpo.trainer import Trainer
from pxpo.world.architecture import build_tiny_pipeline

pytestmark = pytest.mark.slow  # every test here trains


def test_run_folder_contents_and_lora_loads_into_a_fresh_pipeline(make_config, tiny_pipe):
    config = make_config(sample={"num_steps": 4, "batch_size": 4}, train={"batch_size": 4},
                         run={"num_epochs": 2, "checkpoint_every": 1, "keep_checkpoints": 1})  # fmt: skip
    trainer = Trainer(config, pipeline=tiny_pipe, progress=False)
    trainer.train()
    run = trainer.run
    for path in [run.config, run.metrics, run.reward_curve, run.evolution, run.lora / "pytorch_lora_weights.safetensors"]:
        assert path.is_file(), path
    assert [p.name for p in run.list_checkpoints()] == ["epoch_0002"]
    lines = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    for key in ["reward_mean", "reward_std", "approx_kl", "clipfrac", "loss", "sample_seconds", "train_seconds"]:
        assert key in lines[1], key
    assert run.eval_image_path(2, 1).is_file()

    def images(pipe):
        return pipe("red taxi in traffic", num_inference_steps=4, eta=1.0, output_type="pt",
                    generator=torch.Generator().manual_seed(5)).images  # fmt: skip

    fresh = build_tiny_pipeline(seed=0)
    before = images(fresh)
    fresh.load_lora_weights(str(run.lora))
    after = images(fresh)
    trained = images(tiny_pipe)  # the pipeline the trainer updated in place
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, trained, rtol=1e-4, atol=1e-4)


def test_full_denoiser_fine_tuning_writes_a_folder_that_pxpo_sample_loads(make_config, tmp_path):
    config = make_config(model={"lora": False}, sample={"num_steps": 3, "batch_size": 2}, train={"batch_size": 2, "learning_rate": 1e-4},
                         eval={"seeds": [0]}, run={"num_epochs": 1})  # fmt: skip
    trainer = Trainer(config, pipeline=build_tiny_pipeline(0), progress=False)
    trainer.train()
    assert (trainer.run.path / "unet" / "config.json").is_file() and not trainer.run.lora.exists()
    out = tmp_path / "full.png"
    assert main(["sample", str(trainer.run.path), "--prompt", "red taxi in traffic", "--num-steps", "2", "--out", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size == (64, 64)


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
