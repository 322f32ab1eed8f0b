"""What only FLUX.2 and FLUX.2 [klein] have (the contract they share with every family is tests/test_families.py):
the guidance embedding (FLUX.2 [dev]) against CFG (klein base) and no guidance (step-distilled klein), the VAE's
batch-norm latent statistics, non-square token grids, and offline tokenizers that reload.
Shapes: B batch, C latent channels, h x w latent grid, H x W pixels.
"""

from __future__ import annotations

import pytest
import torch

from pxpo.families import family_for
from pxpo.rollout import sample_trajectories
from pxpo.world.tiny_flux2 import build_tiny_flux2_klein_pipeline, build_tiny_flux2_pipeline

PROMPTS = ["red taxi in traffic", "nature landscape"]


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoiser_calls(family, latents: torch.Tensor, guidance_scale: float) -> list[dict]:
    """The keyword arguments of each transformer call one ``predict`` makes."""
    calls = []
    handle = family.denoiser.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    with torch.no_grad():
        conditioning = family.encode_prompts(PROMPTS, guidance_scale)
        family.predict(family.denoiser, latents, torch.full((latents.shape[0],), 500.0), conditioning, guidance_scale)
    handle.remove()
    return calls


def test_guidance_is_an_embedding_for_flux2_cfg_for_klein_base_and_nothing_for_distilled_klein():
    latents = torch.randn(2, 4, 16, 16)
    (call,) = denoiser_calls(family_for(build_tiny_flux2_pipeline()), latents, 3.0)  # one call, the scale embedded
    assert call["hidden_states"].shape == (2, 64, 16) and call["guidance"].tolist() == [3.0, 3.0]
    klein = family_for(build_tiny_flux2_klein_pipeline())
    (call,) = denoiser_calls(klein, latents, 3.0)  # unconditional and conditional halves in one batch
    assert call["hidden_states"].shape == (4, 64, 16) and call.get("guidance") is None
    empty = klein.embed([""])
    torch.testing.assert_close(call["encoder_hidden_states"][:2], empty.expand(2, -1, -1))
    (call,) = denoiser_calls(klein, latents, 1.0)  # no guidance at scale 1
    assert call["hidden_states"].shape == (2, 64, 16)
    distilled = family_for(build_tiny_flux2_klein_pipeline(is_distilled=True))
    assert "negative_embeds" not in distilled.encode_prompts(PROMPTS, 3.0).tensors
    (call,) = denoiser_calls(distilled, latents, 3.0)
    assert call["hidden_states"].shape == (2, 64, 16)


@pytest.mark.parametrize("build", [build_tiny_flux2_pipeline, lambda: build_tiny_flux2_klein_pipeline(is_distilled=True)],
                         ids=["flux2", "flux2-klein-distilled"])  # fmt: skip
def test_the_deterministic_limit_is_the_pipeline_on_a_non_square_image(build):
    """64 x 96 pixels: a 16 x 24 grid, 8 x 12 tokens (rows and columns must not swap), the shift of 96 tokens; the
    step-distilled klein ignores guidance_scale as its pipeline does."""
    pipe = quiet(build())
    ours = sample_trajectories(pipe, ["nature landscape"], num_steps=2, guidance_scale=3.0, noise_level=1e-7, height=64, width=96,
                               generator=torch.Generator().manual_seed(5))  # fmt: skip
    seen = []
    reference = pipe(prompt="nature landscape", num_inference_steps=2, guidance_scale=3.0, height=64, width=96, output_type="pt",
                     max_sequence_length=pipe.tokenizer.model_max_length, generator=torch.Generator().manual_seed(5),
                     callback_on_step_end=lambda p, i, t, kw: seen.append(kw["latents"]) or {}).images  # fmt: skip
    assert ours.latents.shape == (1, 3, 4, 16, 24)
    ids = pipe._prepare_latent_ids(torch.zeros(1, 1, 8, 12))
    for j, tokens in enumerate(seen):
        torch.testing.assert_close(ours.latents[:, j + 1], pipe._unpatchify_latents(pipe._unpack_latents_with_ids(tokens, ids)),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
    torch.testing.assert_close(ours.images, reference.float(), rtol=1e-4, atol=1e-4)


def test_decode_undoes_the_vaes_batch_norm_statistics():
    """The transformer's latents are normalised by the VAE's batch norm (per patchified channel); decoding without
    undoing it would give other images (the tiny VAE's statistics are drawn, not 0 and 1)."""
    pipe = build_tiny_flux2_pipeline()
    family, latents = family_for(pipe), torch.randn(1, 4, 16, 16)
    assert not torch.allclose(pipe.vae.bn.running_mean, torch.zeros(16))
    with torch.no_grad():
        plain = (pipe.vae.decode(latents).sample / 2 + 0.5).clamp(0, 1)
        assert (family.decode(latents) - plain).abs().max() > 1e-2


def test_a_pipeline_without_its_text_encoder_is_refused_in_one_line():
    pipe = build_tiny_flux2_klein_pipeline()
    pipe.text_encoder = None
    with pytest.raises(ValueError, match="^Flux2KleinPipeline has no text_encoder: pxpo encodes prompts with"):
        family_for(pipe).encode_prompts(PROMPTS, 1.0)


def test_the_tiny_tokenizers_reload_and_keep_the_chat_layouts(tmp_path):
    from transformers import AutoProcessor, AutoTokenizer

    flux2, klein = build_tiny_flux2_pipeline(), build_tiny_flux2_klein_pipeline()
    flux2.tokenizer.save_pretrained(tmp_path / "mistral")
    klein.tokenizer.save_pretrained(tmp_path / "qwen")
    messages = [[{"role": "system", "content": [{"type": "text", "text": "You are an AI."}]},
                 {"role": "user", "content": [{"type": "text", "text": "red taxi"}]}]]  # fmt: skip
    loaded = AutoProcessor.from_pretrained(tmp_path / "mistral")  # as diffusers loads FLUX.2's tokenizer
    options = {"tokenize": True, "return_dict": True, "padding": "max_length", "max_length": 32}
    tokens = loaded.apply_chat_template(messages, **options)["input_ids"]
    assert tokens == flux2.tokenizer.apply_chat_template(messages, **options)["input_ids"]
    pieces = loaded.convert_ids_to_tokens(tokens[0])
    assert pieces[:2] == ["<s>", "[SYSTEM_PROMPT]"] and "Ġtaxi" in pieces and pieces[-1] == "<pad>"
    user = [{"role": "user", "content": "red taxi"}]
    text = klein.tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert AutoTokenizer.from_pretrained(tmp_path / "qwen")(text).input_ids == klein.tokenizer(text).input_ids
