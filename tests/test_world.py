"""The procedural world, the bundled models and the segmentation reward."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusion3Pipeline, StableDiffusionPipeline

from pxpo.cli import main
from pxpo.config import load_config
from pxpo.models import load_pipeline, load_segmenter
from pxpo.world import WEIGHTS
from pxpo.rewards import RewardError, load_reward
from pxpo.trainer import Trainer
from pxpo.world.evaluate import segmenter_iou
from pxpo.world.scenes import CLASSES, FAMILIES, FAMILY_PROMPTS, ID2LABEL, LABEL2ID, class_presence, render_scene


def test_renderer_is_deterministic_and_seeds_differ():
    a, b = render_scene(123), render_scene(123)
    c = render_scene(124, a.family)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) and a.caption == b.caption
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8 and a.labels.shape == (64, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_and_captions_agree_with_what_is_drawn(family):
    for seed in range(40):
        scene = render_scene(seed, family)
        counts = np.bincount(scene.labels.ravel(), minlength=len(CLASSES))
        assert scene.labels.max() < len(CLASSES)
        assert scene.caption.startswith(FAMILY_PROMPTS[family])
        assert all(class_presence(scene.labels, family).values()), (seed, scene.caption)
        if "wearing a hat" in scene.caption:
            assert scene.attributes["hat"] and counts[LABEL2ID["hat"]] > 0
        if family == "beach":
            assert (counts[LABEL2ID["hat"]] > 0) == scene.attributes["hat"]
        if "snow mountains" in scene.caption:
            assert counts[LABEL2ID["snow"]] > 0
        if family == "landscape" and not scene.attributes["snow"]:
            assert counts[LABEL2ID["snow"]] == 0
        for time in ("night", "sunset"):
            if f"at {time}" in scene.caption:
                assert scene.attributes["time"] == time
        # The label map is pixel-exact: a region of one class has one colour up to the texture noise.
        for name in ("sand", "grass", "water"):  # (roads carry lane markings, also labelled road)
            mask = scene.labels == LABEL2ID[name]
            if mask.sum() > 50:
                assert scene.image[mask].astype(float).std(axis=0).max() < 12, (seed, name)


def test_every_taxi_scene_has_a_red_taxi_in_front_and_a_blue_day_sky():
    """What the blue-penalty experiment acts on, in every scene rather than one seed's: the taxi is painted red after
    the cars behind it and is larger than the cars in front (so it is never hidden), and the day sky is a gradient
    between two blues whose blue exceeds their red by 0.3, far above the texture noise (0.025)."""
    for seed in range(200):
        scene = render_scene(seed, "taxi")
        image = scene.image.astype(float) / 255
        red = (image[..., 0] > 2 * image[..., 1:].max(axis=-1)) & (scene.labels == LABEL2ID["car"])
        assert red.sum() >= 40, (seed, int(red.sum()))  # (at least 70 in these scenes)
        if scene.attributes["time"] == "day":
            sky = image[scene.labels == LABEL2ID["sky"]]
            assert (sky[:, 2] - sky[:, 0]).min() > 0.2, seed  # every sky pixel


def test_bundled_models_load_offline_through_the_public_loaders():
    pipe = load_pipeline("pxpo-tiny")
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.unet.config.sample_size == 16 and pipe.vae_scale_factor == 4
    flow = load_pipeline("pxpo-tiny-flow")
    assert isinstance(flow, StableDiffusion3Pipeline) and flow.text_encoder_3 is None
    assert flow.transformer.config.sample_size == 16 and flow.vae_scale_factor == 4
    model, processor = load_segmenter("pxpo-tiny-seg")
    assert {int(k): v for k, v in model.config.id2label.items()} == ID2LABEL
    pixels = processor(images=render_scene(0).image, return_tensors="pt")["pixel_values"]  # the processor feeds the model
    assert pixels.shape[:2] == (1, 3) and model(pixel_values=pixels).logits.shape[:2] == (1, len(CLASSES))
    size = sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file())
    assert size <= 45 * 10**6, size  # all bundled weights together


def test_segmenter_iou_on_held_out_renders():
    model, processor = load_segmenter("pxpo-tiny-seg")
    ious = segmenter_iou(model, processor, num_images=60)
    assert ious["mean_iou"] > 0.8, ious
    for name in ("sky", "water", "tree", "road", "car", "sand", "hair"):
        assert ious[name] > 0.7, (name, ious[name])


def test_segmentation_reward_sign_shape_and_unknown_class():
    scene = render_scene(3, "beach")
    images = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 255
    output = load_reward("segmentation", classes={"hair": -1.0})(images, ["p"], [{}])
    heatmap = output.heatmaps
    assert heatmap.shape == (1, 64, 64)
    from pxpo.models import load_segmenter
    from pxpo.rewards.segmentation import class_probabilities

    segmenter, processor = load_segmenter("pxpo-tiny-seg")
    most_likely = class_probabilities(segmenter, processor, images).argmax(dim=1)
    assert torch.equal(output.judged, most_likely == LABEL2ID["hair"])  # it judges where hair is the most likely class
    hair, sky = scene.labels == LABEL2ID["hair"], scene.labels == LABEL2ID["sky"]
    assert heatmap[0][torch.from_numpy(hair)].mean() < -0.5
    assert heatmap[0][torch.from_numpy(sky)].mean() > -0.05
    assert heatmap.max() <= 0
    with pytest.raises(RewardError, match="has no class 'beard'; its classes are sky, sun"):
        load_reward("segmentation", classes={"beard": -1.0})


@pytest.mark.slow  # trains
def test_pretrain_command_writes_loadable_models(tmp_path):
    out = tmp_path / "weights"
    args = ["pretrain", "--out", str(out)] + [f"--set={k}=2" for k in ("vae_steps", "unet_steps", "flow_steps", "seg_steps")]
    sizes = [f"--set={k}=8" for k in ("vae_batch", "unet_batch", "flow_batch", "seg_batch")]
    assert main(args + ["--set", "num_scenes=64", *sizes]) == 0
    load_pipeline(str(out / "pxpo-tiny"))
    flow = load_pipeline(str(out / "pxpo-tiny-flow"))
    assert isinstance(flow, StableDiffusion3Pipeline) and flow.vae.config.shift_factor is not None
    model, _ = load_segmenter(str(out / "pxpo-tiny-seg"))
    assert model.config.num_labels == len(CLASSES)
    stats = json.loads((out / "pretrain_stats_t2i_flow_segmenter.json").read_text())
    assert stats["settings"]["unet_steps"] == 2 and stats["unet_seconds"] > 0 and stats["flow_seconds"] > 0
    assert main(["pretrain", "--out", str(out), "--set", "unet_stepz=3"]) == 2


@pytest.mark.slow  # trains the bundled SD3-class model (every family's contract, on random tiny pipelines: test_families.py)
def test_short_pxpo_run_on_the_bundled_flow_model_loads_back_through_diffusers(tmp_path):
    config = load_config("configs/flow_blue_penalty.toml", [
        f"run.output_dir={str(tmp_path)!r}", "run.name='flow'", "run.num_epochs=2", "sample.num_steps=4", "sample.batch_size=4",
        "train.batch_size=4", "train.timesteps_per_forward=4", "sample.group_size=2", "eval.seeds=[0, 1]",
        "advantage.normalization='group_location'", "train.kl_coef=0.05",
    ])  # fmt: skip
    trainer = Trainer(config, progress=False)
    metrics = trainer.train()
    assert [m["epoch"] for m in metrics] == [0, 1, 2] and metrics[2]["kl"] > 0
    pipe = StableDiffusion3Pipeline.from_pretrained(str(WEIGHTS / "pxpo-tiny-flow"), text_encoder_3=None, tokenizer_3=None)

    def images():
        return pipe("red taxi in traffic", num_inference_steps=4, max_sequence_length=0, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    before = images()
    pipe.load_lora_weights(str(trainer.run.lora))
    assert (images() - before).abs().max() > 1e-3
    assert main(["sample", str(trainer.run.path), "--prompt", "red taxi in traffic", "--seed", "0", "1", "--num-steps", "4",
                 "--out", str(tmp_path / "strip.png")]) == 0  # fmt: skip
    assert (tmp_path / "strip.png").is_file()
