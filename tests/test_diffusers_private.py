"""The private diffusers functions pxpo calls (``pxpo.diffusers_private``) still do what pxpo relies on.

Each is checked against the pinned diffusers' own pipeline or scheduler, and against the layout or
formula pxpo assumes, so that a diffusers upgrade that changes one fails here.
"""

import pytest
import torch
from diffusers import DDIMScheduler

from pxpo.diffusers_private import calculate_shift, pack_latents, prepare_latent_image_ids, threshold_sample, unpack_latents
from pxpo.world.architecture import build_tiny_flux_pipeline


def test_threshold_sample_is_ddim_steps_own_and_imagens_dynamic_thresholding():
    scheduler = DDIMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0, prediction_type="sample")
    scheduler.set_timesteps(10)
    x0 = torch.randn(3, 4, 8, 8) * torch.tensor([0.5, 2.0, 6.0]).view(3, 1, 1, 1)  # s < 1, 1 < s < 3, s > 3
    ours = threshold_sample(scheduler, x0)
    # DDIMScheduler.step thresholds its x0 prediction (here the model output itself) the same way
    step = scheduler.step(x0, scheduler.timesteps[3], torch.randn_like(x0), eta=0.0)
    torch.testing.assert_close(ours, step.pred_original_sample)
    # Imagen's rule: s = the ratio-quantile of |x0| per sample, clamped to [1, sample_max_value]; clip to [-s, s] / s
    s = torch.quantile(x0.abs().flatten(1), 0.9, dim=1).clamp(1, 3.0).view(-1, 1, 1, 1)
    torch.testing.assert_close(ours, torch.maximum(torch.minimum(x0, s), -s) / s)
    assert not torch.equal(ours[1:], x0[1:])


@pytest.fixture(scope="module")
def flux_pipe():
    return build_tiny_flux_pipeline()


def test_flux_packing_is_the_pipelines_own_and_round_trips(flux_pipe):
    b, c, h, w = 2, 16, 8, 6
    pixels = (h * flux_pipe.vae_scale_factor, w * flux_pipe.vae_scale_factor)
    tokens, ids = flux_pipe.prepare_latents(b, c, *pixels, torch.float32, "cpu", torch.Generator().manual_seed(0))
    latents = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pack_latents(latents), tokens)  # the pipeline's initial tokens from the same noise
    torch.testing.assert_close(prepare_latent_image_ids(h, w, "cpu", torch.float32), ids)
    torch.testing.assert_close(unpack_latents(tokens, h, w), latents)
    # the pipeline's own unpacking before decoding (from pixel sizes)
    torch.testing.assert_close(flux_pipe._unpack_latents(tokens, *pixels, flux_pipe.vae_scale_factor), latents)


def test_flux_token_layout_and_position_ids_agree():
    """Token k is the 2 x 2 patch at row i, column j of the token grid, with features ordered (channel, dy, dx),
    and its position id is (0, i, j): the layout FLUX's transformer was trained on."""
    c, h, w = 3, 4, 6
    channel, y, x = torch.meshgrid(torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
    latents = (channel * 100 + y * 10 + x).float()[None]
    tokens = pack_latents(latents)[0]
    ids = prepare_latent_image_ids(h, w, "cpu", torch.float32)
    assert tokens.shape == (h // 2 * w // 2, 4 * c) and ids.shape == (h // 2 * w // 2, 3)
    for k in range(tokens.shape[0]):
        zero, i, j = (int(v) for v in ids[k])
        assert zero == 0 and k == i * (w // 2) + j
        expected = [ch * 100 + (2 * i + dy) * 10 + (2 * j + dx) for ch in range(c) for dy in range(2) for dx in range(2)]
        assert tokens[k].tolist() == expected


def test_calculate_shift_interpolates_linearly_in_token_count():
    assert calculate_shift(256, 256, 4096, 0.5, 1.15) == pytest.approx(0.5)
    assert calculate_shift(4096, 256, 4096, 0.5, 1.15) == pytest.approx(1.15)
    assert calculate_shift(2176, 256, 4096, 0.5, 1.15) == pytest.approx(0.825)


# SDXL ------------------------------------------------------------------------------------------------------
def test_sdxl_add_time_ids_are_what_the_pipeline_gives_its_unet():
    """(original H, W, crop top, left, target H, W) for an H x W image, the same on both CFG halves; a UNet whose added
    embedding does not fit them is refused."""
    from pxpo.diffusers_private import sdxl_add_time_ids
    from pxpo.world.tiny_sdxl import build_tiny_sdxl_pipeline

    pipe = build_tiny_sdxl_pipeline()
    pipe.set_progress_bar_config(disable=True)
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["time_ids"])

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    pipe(["red taxi", "nature landscape"], num_inference_steps=1, guidance_scale=3.0, height=64, width=96, output_type="latent")
    handle.remove()
    projection_dim = pipe.text_encoder_2.config.projection_dim
    ours = sdxl_add_time_ids(pipe, (64, 96), (0, 0), (64, 96), torch.float32, projection_dim)
    assert ours.tolist() == [[64, 96, 0, 0, 64, 96]]
    torch.testing.assert_close(seen[0], ours.repeat(4, 1), rtol=0, atol=0)  # 2 unconditional + 2 conditional rows
    with pytest.raises(ValueError, match="expects an added time embedding vector of length 80, but a vector of 81"):
        sdxl_add_time_ids(pipe, (64, 96), (0, 0), (64, 96), torch.float32, projection_dim + 1)


# Qwen-Image ------------------------------------------------------------------------------------------------
def test_qwen_image_packing_is_the_pipelines_own_and_round_trips():
    """The pipeline's initial tokens are its noise [B, 1, C, h, w] packed: ours from the same noise on the grid; the
    tokens it decodes are unpacked (by its own ``_unpack_latents``, to [B, C, 1, h, w]) to the grid ours unpacks to."""
    from pxpo.diffusers_private import qwen_image_pack_latents, qwen_image_unpack_latents
    from pxpo.world.tiny_qwen_image import build_tiny_qwen_image_pipeline

    pipe = build_tiny_qwen_image_pipeline()
    b, c, h, w = 2, 4, 8, 6
    pixels = (h * pipe.vae_scale_factor, w * pipe.vae_scale_factor)
    tokens = pipe.prepare_latents(b, c, *pixels, torch.float32, "cpu", torch.Generator().manual_seed(0))
    latents = torch.randn(b, 1, c, h, w, generator=torch.Generator().manual_seed(0))[:, 0]
    assert tokens.shape == (b, (h // 2) * (w // 2), 4 * c)
    torch.testing.assert_close(qwen_image_pack_latents(latents), tokens, rtol=0, atol=0)
    unpacked = qwen_image_unpack_latents(tokens, h, w)
    torch.testing.assert_close(unpacked, pipe._unpack_latents(tokens, *pixels, pipe.vae_scale_factor)[:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(unpacked, latents, rtol=0, atol=0)


# FLUX.2 ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flux2_pipe():
    from pxpo.world.tiny_flux2 import build_tiny_flux2_pipeline

    pipe = build_tiny_flux2_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_flux2_packing_is_the_pipelines_own_and_round_trips(flux2_pipe):
    """The pipeline draws patchified noise [B, 4C, h/2, w/2] and packs it with ids (0, row, column, 0); on the VAE's grid
    (unpatchified) the same noise packs to the same tokens and ids, and unpacks back (a non-square grid)."""
    from pxpo.diffusers_private import flux2_pack_latents, flux2_patchify_latents, flux2_unpack_latents, flux2_unpatchify_latents

    b, c, h, w = 2, 4, 8, 12
    pixels = (h * flux2_pipe.vae_scale_factor, w * flux2_pipe.vae_scale_factor)
    tokens, ids = flux2_pipe.prepare_latents(b, c, *pixels, torch.float32, "cpu", torch.Generator().manual_seed(0))
    noise = torch.randn(b, 4 * c, h // 2, w // 2, generator=torch.Generator().manual_seed(0))
    latents = flux2_unpatchify_latents(noise)
    assert latents.shape == (b, c, h, w) and torch.equal(flux2_patchify_latents(latents), noise)
    ours, our_ids = flux2_pack_latents(latents)
    torch.testing.assert_close(ours, tokens, rtol=0, atol=0)
    torch.testing.assert_close(our_ids, ids, rtol=0, atol=0)
    assert ids[0, : w // 2 + 1].tolist() == [[0, 0, j, 0] for j in range(w // 2)] + [[0, 1, 0, 0]]
    torch.testing.assert_close(flux2_unpack_latents(tokens, ids), latents, rtol=0, atol=0)
    # a patch is 2 x 2 neighbouring grid cells, stacked in channels (channel, dy, dx)
    assert torch.equal(noise[:, 1, 0, 0], latents[:, 0, 0, 1]) and torch.equal(noise[:, 2, 0, 0], latents[:, 0, 1, 0])


def test_flux2_text_ids_and_empirical_mu_are_what_the_pipeline_uses(flux2_pipe, monkeypatch):
    import functools

    from pxpo.diffusers_private import flux2_empirical_mu, flux2_prepare_text_ids

    embeds, text_ids = flux2_pipe.encode_prompt(["red taxi", "nature landscape"], max_sequence_length=16)
    torch.testing.assert_close(flux2_prepare_text_ids(embeds), text_ids, rtol=0, atol=0)
    assert text_ids[1, :3].tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2]]
    seen = []
    set_timesteps = flux2_pipe.scheduler.set_timesteps

    @functools.wraps(set_timesteps)  # (the pipeline reads its signature)
    def spy(*args, **kwargs):
        seen.append(kwargs["mu"])
        return set_timesteps(*args, **kwargs)

    monkeypatch.setattr(flux2_pipe.scheduler, "set_timesteps", spy)
    flux2_pipe(prompt="red taxi", height=64, width=96, num_inference_steps=3, max_sequence_length=16, output_type="latent")
    assert seen == [pytest.approx(flux2_empirical_mu(8 * 12, 3))]  # 64 x 96 pixels, 4x VAE, 2 x 2 patches: 8 x 12 tokens
    # BFL's fit: linear in the token count above 4300 tokens, whatever the steps; below, interpolated in the steps
    assert flux2_empirical_mu(5000, 4) == flux2_empirical_mu(5000, 50) == pytest.approx(0.00016927 * 5000 + 0.45666666)
    assert flux2_empirical_mu(4096, 200) == pytest.approx(0.00016927 * 4096 + 0.45666666)
    assert flux2_empirical_mu(4096, 10) == pytest.approx(8.73809524e-05 * 4096 + 1.89833333)


# Z-Image ---------------------------------------------------------------------------------------------------
def test_z_image_sigmas_set_the_timesteps_the_pipeline_samples_with():
    """Z-Image's float32 linspace 1 .. 1 / T, and, set with the pipeline's mu and shifted by the scheduler, the very
    timesteps ZImagePipeline steps through (bit for bit: a float64 linspace can differ in the last float32 bit)."""
    from pxpo.diffusers_private import z_image_sigmas
    from pxpo.world.tiny_z_image import build_tiny_z_image_pipeline

    assert z_image_sigmas(4) == torch.linspace(1.0, 0.25, 4).tolist()
    pipe = build_tiny_z_image_pipeline()
    pipe.set_progress_bar_config(disable=True)
    seen = []

    def record(pipe, i, t, tensors):
        seen.append(t)
        return {}

    pipe("red taxi", num_inference_steps=5, guidance_scale=0.0, height=64, width=64, output_type="latent",
         callback_on_step_end=record)
    mu = calculate_shift(64, 256, 4096, 0.5, 1.15)  # the pipeline's mu for 8 x 8 tokens (unused by a static shift)
    pipe.scheduler.set_timesteps(sigmas=z_image_sigmas(5), mu=mu)
    assert torch.equal(torch.stack(seen), pipe.scheduler.timesteps)
    assert pipe.scheduler.timesteps[0] == 1000
    assert not torch.equal(pipe.scheduler.sigmas[:-1], torch.tensor(z_image_sigmas(5)))  # the scheduler's shift of 3
