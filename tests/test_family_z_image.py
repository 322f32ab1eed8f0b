"""What only the Z-Image family has (the shared contract is tests/test_families.py): its default size, the guidance
scale written another way than pxpo's, caption features of one length per prompt, and the tiny Qwen tokenizer."""

from __future__ import annotations

import pytest
import torch

from pxpo.families import family_for
from pxpo.rollout import sample_trajectories
from pxpo.sampling import Conditioning
from pxpo.world.tiny_z_image import build_qwen_tokenizer, build_tiny_z_image_pipeline


@pytest.fixture
def pipe():
    pipe = build_tiny_z_image_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _Stop(Exception):
    pass


def test_the_native_size_is_the_pipelines_default(pipe, monkeypatch):
    """ZImagePipeline has no default_sample_size: its size without height and width is what prepare_latents is given."""
    seen = []

    def prepare_latents(batch, channels, height, width, *args, **kwargs):
        seen.append((height, width))
        raise _Stop

    monkeypatch.setattr(pipe, "prepare_latents", prepare_latents)
    with pytest.raises(_Stop):
        pipe("red taxi", num_inference_steps=1, guidance_scale=0.0)
    assert seen == [family_for(pipe).default_size()]


def test_without_guidance_the_sampler_is_the_pipeline_at_guidance_0(pipe):
    """Z-Image-Turbo is sampled without CFG: pxpo's guidance_scale 1 (no negative branch) is the pipeline's 0."""
    family = family_for(pipe)
    assert family.encode_prompts(["red taxi"], 1.0).get("negative_embeds") is None
    size = {"height": 64, "width": 64, "generator": torch.Generator().manual_seed(2)}
    ours = sample_trajectories(pipe, ["nature landscape"], num_steps=3, guidance_scale=1.0, noise_level=1e-7, **size)
    size["generator"] = torch.Generator().manual_seed(2)
    length = family.max_sequence_length
    reference = pipe("nature landscape", num_inference_steps=3, guidance_scale=0.0, output_type="pt", max_sequence_length=length,
                     **size)
    torch.testing.assert_close(ours.images, reference.images, rtol=1e-4, atol=1e-4)


def test_caption_features_are_the_pipelines_padded_to_one_length(pipe):
    """Each prompt's features are the pipeline's own list entry (its real tokens only), zero-padded to the padding length,
    so that batches of prompts of other lengths join; the caller's prompt list is left as it was."""
    family = family_for(pipe)
    prompts = ["red taxi", "a small lake under the clouds at sunset"]
    conditioning = family.encode_prompts(prompts, guidance_scale=3.0)
    assert prompts == ["red taxi", "a small lake under the clouds at sunset"]  # (encode_prompt templates its list in place)
    length = family.max_sequence_length
    positive, negative = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=True, max_sequence_length=length)
    for name, features in (("", positive), ("negative_", negative)):
        embeds, lengths = conditioning.get(name + "embeds"), conditioning.get(name + "lengths")
        assert embeds.shape == (2, length, pipe.text_encoder.config.hidden_size)
        assert lengths.tolist() == [len(f) for f in features]
        for row, f in enumerate(features):
            torch.testing.assert_close(embeds[row, : len(f)], f, rtol=0, atol=0)
            assert not embeds[row, len(f) :].any()
    assert lengths[0] == lengths[1] and conditioning.get("lengths")[0] < conditioning.get("lengths")[1]  # "" twice: one length
    joined = Conditioning.cat([conditioning[[1]], family.encode_prompts(["red taxi"], 3.0)])
    torch.testing.assert_close(joined.get("embeds"), conditioning.get("embeds")[[1, 0]], rtol=0, atol=0)


def test_a_pipeline_without_its_text_encoder_is_refused_in_one_line(pipe):
    pipe.text_encoder = None
    with pytest.raises(ValueError, match="^ZImagePipeline has no text_encoder: the z_image family encodes prompts with"):
        family_for(pipe).encode_prompts(["red taxi"], 1.0)


def test_lora_adapts_the_attention_projections_of_every_block(pipe):
    family = family_for(pipe)
    family.add_lora(rank=2)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in family.denoiser.named_parameters() if ".lora_A" in name}
    blocks = [f"{kind}.{i}" for kind, n in (("noise_refiner", 1), ("context_refiner", 1), ("layers", 2)) for i in range(n)]
    projections = ("to_q", "to_k", "to_v", "to_out.0")
    assert adapted == {f"{block}.attention.{p}" for block in blocks for p in projections}


def test_the_tiny_tokenizer_keeps_words_whole_and_survives_a_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = build_qwen_tokenizer()
    messages = [{"role": "user", "content": "a red taxi near the lake"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert text == "<|im_start|>user\na red taxi near the lake<|im_end|>\n<|im_start|>assistant\n"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)
    assert tokens[:2] == ["<|im_start|>", "u"] and tokens[6:12] == ["a", "Ġred", "Ġtaxi", "Ġnear", "Ġthe", "Ġlake"]
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.padding_side == "right"
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text).input_ids == tokenizer(text).input_ids and again.chat_template == tokenizer.chat_template
    assert build_qwen_tokenizer().get_vocab() == tokenizer.get_vocab()  # deterministic
