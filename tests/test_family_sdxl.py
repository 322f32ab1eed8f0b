"""What only the SDXL family has (the shared contract is tests/test_families.py): SDXL's added conditioning (pooled
projection and size ids) and its empty-prompt rule, the VAE's latents_mean / latents_std and float16 upcast, and the
two text encoders it needs. Each is checked against the diffusers StableDiffusionXLPipeline itself.
Shapes: B batch, C latent channels, h x w latent grid, H x W pixels.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from pxpo.families import family_for
from pxpo.world.tiny_sdxl import build_tiny_sdxl_pipeline

HEIGHT, WIDTH = 64, 96  # not square: the size ids must say (H, W), not (W, H)


@pytest.fixture
def pipe() -> StableDiffusionXLPipeline:
    pipe = build_tiny_sdxl_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_inputs(pipe: StableDiffusionXLPipeline, run) -> dict[str, torch.Tensor]:
    """What the UNet receives in its first call during ``run()``: embeds, pooled projections, time ids (CFG-batched)."""
    seen = []

    def hook(module, args, kwargs):
        added = kwargs["added_cond_kwargs"]
        seen.append({"embeds": kwargs["encoder_hidden_states"], "pooled": added["text_embeds"], "time_ids": added["time_ids"]})

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("force_zeros", [True, False])
def test_the_unet_gets_the_pipelines_conditioning_and_unconditional_branch(pipe, force_zeros):
    """SDXL base zeroes the unconditional embeddings (``force_zeros_for_empty_prompt``); without that flag the
    unconditional branch is the empty prompt's encoding. Either way the UNet sees what the pipeline gives it, with
    the pipeline's size ids (H, W, 0, 0, H, W) on both halves."""
    pipe.register_to_config(force_zeros_for_empty_prompt=force_zeros)
    family = family_for(pipe)
    prompts = ["red taxi in traffic", "nature landscape"]
    reference = unet_inputs(
        pipe, lambda: pipe(prompts, num_inference_steps=1, guidance_scale=3.0, height=HEIGHT, width=WIDTH, output_type="latent")
    )
    latents = torch.randn(2, *family.latent_shape(HEIGHT, WIDTH))
    conditioning = family.encode_prompts(prompts, guidance_scale=3.0)
    ours = unet_inputs(pipe, lambda: family.predict(family.denoiser, latents, torch.full((2,), 500.0), conditioning, 3.0))
    for key in ("embeds", "pooled", "time_ids"):
        torch.testing.assert_close(ours[key], reference[key], rtol=0, atol=0)
    assert ours["time_ids"].tolist() == [[HEIGHT, WIDTH, 0, 0, HEIGHT, WIDTH]] * 4
    unconditional = ours["embeds"][:2].abs().sum().item(), ours["pooled"][:2].abs().sum().item()
    assert (unconditional == (0.0, 0.0)) == force_zeros


def final_latents_and_image(pipe: StableDiffusionXLPipeline) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's last latents [1, C, h, w] and its decoded image [1, 3, H, W] in [0, 1] (seed 0)."""
    seen = []
    image = pipe(
        "nature landscape",
        num_inference_steps=2,
        guidance_scale=3.0,
        height=HEIGHT,
        width=WIDTH,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=lambda p, i, t, kw: seen.append(kw["latents"]) or {},
    ).images
    return seen[-1], image


def test_decoding_uses_the_vaes_latents_mean_and_std_as_the_pipeline_does(pipe):
    family = family_for(pipe)
    plain_latents, plain_image = final_latents_and_image(pipe)
    pipe.vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.5, 2.0, 1.0, 1.5])
    latents, image = final_latents_and_image(pipe)  # the same latents, decoded otherwise
    torch.testing.assert_close(latents, plain_latents, rtol=0, atol=0)
    assert (image - plain_image).abs().max() > 1e-3
    with torch.no_grad():
        torch.testing.assert_close(family.decode(latents), image, rtol=1e-4, atol=1e-4)
        pipe.vae.register_to_config(latents_mean=None, latents_std=None)
        torch.testing.assert_close(family.decode(plain_latents), plain_image, rtol=1e-4, atol=1e-4)


def test_a_float16_vae_with_force_upcast_decodes_in_float32_and_stays_float16(pipe):
    family = family_for(pipe)
    latents = torch.randn(1, *family.latent_shape(HEIGHT, WIDTH))
    pipe.vae.to(torch.float16)
    with torch.no_grad():
        upcast = family.decode(latents)
        assert pipe.vae.dtype == torch.float16
        pipe.vae.to(torch.float32)  # the same float16-rounded weights, in float32: what the pipeline decodes with
        reference = family.decode(latents)
    torch.testing.assert_close(upcast, reference, rtol=0, atol=0)


@pytest.mark.parametrize("missing", ["text_encoder", "text_encoder_2"])
def test_a_missing_text_encoder_is_named(pipe, missing):
    setattr(pipe, missing, None)
    expected = f"^StableDiffusionXLPipeline.{missing} is None: SDXL's UNet needs both CLIP text encoders$"
    with pytest.raises(ValueError, match=expected):
        family_for(pipe).encode_prompts(["nature landscape"], guidance_scale=3.0)
