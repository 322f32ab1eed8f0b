"""What only the Qwen-Image family has (the contract every family passes is tests/test_families.py): the Qwen2.5-VL
prompt template, text of varying length with a padding mask, true CFG rescaled to the conditional norm, the dynamic
shift at other sizes, and no LoRA where no gradient can reach.

Shapes: B batch, L text tokens, D text width, C latent channels, h x w latent grid.
"""

import pytest
import torch

from pxpo.diffusers_private import qwen_image_pack_latents
from pxpo.families import family_for
from pxpo.families.qwen_image import NEGATIVE_PROMPT, TEXT_TOKENS
from pxpo.sampling import Conditioning
from pxpo.world.tiny_qwen_image import build_tiny_qwen_image_pipeline

GRID = (4, 16, 16)


@pytest.fixture
def pipe():
    pipe = build_tiny_qwen_image_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_tiny_tokenizer_gives_the_template_the_system_prompt_length_the_pipeline_drops(pipe):
    system = pipe.prompt_template_encode.split("{}")[0]
    assert len(pipe.tokenizer(system).input_ids) == pipe.prompt_template_encode_start_idx == 34
    assert pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(" red taxi").input_ids) == ["Ġred", "Ġtaxi"]


def test_prompts_of_other_lengths_are_padded_to_one_length_and_batch_as_single_prompts(pipe):
    """Embeds and masks are padded to TEXT_TOKENS (batches concatenate); a batch's prediction, guided, equals each
    prompt's alone (where nothing is padded and the pipeline passes no mask)."""
    family = family_for(pipe)
    prompts = ["red", "red taxi in traffic under a cloudy sky at night"]
    conditioning = Conditioning.cat([family.encode_prompts([p], 3.0) for p in prompts])
    assert conditioning.get("embeds").shape == (2, TEXT_TOKENS, pipe.text_encoder.config.text_config.hidden_size)
    lengths = conditioning.get("mask").sum(dim=1)
    assert lengths[0] < lengths[1] and conditioning.get("mask")[0, lengths[0]:].sum() == 0
    negative = pipe.encode_prompt(NEGATIVE_PROMPT)[0]
    assert (conditioning.get("negative_mask").sum(dim=1) == negative.shape[1]).all()
    latents, t = torch.randn(2, *GRID), torch.tensor([800.0, 300.0])
    with torch.no_grad():
        batched = family.predict(family.denoiser, latents, t, conditioning, 3.0)
        for i in range(2):
            alone = family.predict(family.denoiser, latents[i : i + 1], t[i : i + 1], conditioning[i : i + 1], 3.0)
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-4, atol=1e-5)


def test_true_cfg_is_rescaled_to_the_norm_of_each_conditional_token(pipe):
    family = family_for(pipe)
    conditioning = family.encode_prompts(["nature landscape"], 4.0)
    latents, t = torch.randn(1, *GRID), torch.tensor([600.0])
    with torch.no_grad():
        cond = qwen_image_pack_latents(family.predict(family.denoiser, latents, t, conditioning, 1.0))  # no guidance
        guided = qwen_image_pack_latents(family.predict(family.denoiser, latents, t, conditioning, 4.0))
    torch.testing.assert_close(guided.norm(dim=-1), cond.norm(dim=-1), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(guided, cond, atol=1e-3)
    assert "negative_embeds" not in family.encode_prompts(["nature landscape"], 1.0).tensors  # no guidance: no negative


def test_the_timesteps_are_the_pipelines_at_other_sizes(pipe):
    """The dynamic shift depends on the packed token count: 16 x 32 cells (8 x 16 tokens) shift more than 16 x 16."""
    family = family_for(pipe)
    seen = []
    pipe("red taxi", num_inference_steps=5, height=64, width=128, output_type="latent", true_cfg_scale=1.0,
         callback_on_step_end=lambda p, i, t, kw: seen.append(t) or {})  # fmt: skip
    ours = family.set_timesteps(5, family.latent_shape(64, 128))
    assert torch.equal(torch.stack(seen), ours)
    assert not torch.equal(ours, family.set_timesteps(5, GRID))


def test_lora_leaves_out_the_last_blocks_text_output_which_no_gradient_reaches(pipe):
    family = family_for(pipe)
    family.add_lora(rank=4)
    blocks = family.denoiser.transformer_blocks
    assert hasattr(blocks[0].attn.to_add_out, "lora_A") and hasattr(blocks[-1].attn.to_q, "lora_A")
    assert not hasattr(blocks[-1].attn.to_add_out, "lora_A")


def test_a_pipeline_without_its_text_encoder_is_refused(pipe):
    pipe.text_encoder = None
    with pytest.raises(ValueError, match="QwenImagePipeline.text_encoder is None: Qwen-Image encodes prompts with its Qwen2"):
        family_for(pipe).encode_prompts(["red taxi"], 4.0)
