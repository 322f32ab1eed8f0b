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
