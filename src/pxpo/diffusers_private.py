"""Every private (or unexported) diffusers function pxpo calls, in one place.

diffusers may change or remove these in any release without notice. pxpo pins diffusers 0.42.1; each
function below says where in that release its diffusers counterpart lives and why pxpo needs it, and
``tests/test_diffusers_private.py`` checks each against the pipeline or scheduler that uses it, so that
an upgrade that changes one fails a test instead of training silently wrong. Other pxpo modules call
these wrappers, never the diffusers names.

Shapes: B batch, C latent channels, h x w latent grid (even sides for FLUX's 2 x 2 packing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from diffusers import DDIMScheduler


def threshold_sample(scheduler: DDIMScheduler, x0: torch.Tensor) -> torch.Tensor:
    """Imagen's dynamic thresholding of a predicted clean sample x0 [B, C, h, w], as the scheduler's config sets it.

    diffusers 0.42.1: ``DDIMScheduler._threshold_sample`` (diffusers/schedulers/scheduling_ddim.py, copied
    from DDPMScheduler). pxpo's ``ddim_step_with_logprob`` recomputes DDIM's step to get the policy's
    mean and log-probability, and must treat x0 exactly as ``DDIMScheduler.step`` does when the
    scheduler has ``thresholding=True``.
    """
    return scheduler._threshold_sample(x0)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, C, h, w] -> FLUX tokens [B, (h/2)(w/2), 4C]: each 2 x 2 patch becomes one token.

    diffusers 0.42.1: ``FluxPipeline._pack_latents`` (diffusers/pipelines/flux/pipeline_flux.py, a
    static method). pxpo keeps FLUX latents on the unpacked grid (where heatmaps and log-probabilities
    live) and packs them for each transformer call; the token layout must be the one FLUX was trained on.
    """
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack_latents(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """FLUX tokens [B, (h/2)(w/2), 4C] -> latents [B, C, h, w]; the inverse of ``pack_latents``.

    diffusers 0.42.1: ``FluxPipeline._unpack_latents`` (diffusers/pipelines/flux/pipeline_flux.py, a
    static method taking pixel sizes and the VAE's scale factor; with a scale factor of 1 the sizes are
    the latent grid's). pxpo unpacks the transformer's velocity onto the latent grid at every step.
    """
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(tokens, latent_height, latent_width, 1)


def prepare_latent_image_ids(latent_height: int, latent_width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The FLUX transformer's position ids [(h/2)(w/2), 3] of the tokens ``pack_latents`` makes from an h x w grid.

    diffusers 0.42.1: ``FluxPipeline._prepare_latent_image_ids`` (diffusers/pipelines/flux/pipeline_flux.py,
    a static method taking the token grid's sides). pxpo calls the transformer itself (``img_ids``), not
    the pipeline, so it builds the ids the pipeline would.
    """
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(None, latent_height // 2, latent_width // 2, device, dtype)


def calculate_shift(image_seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float) -> float:
    """The resolution-dependent timestep shift mu: linear in the image's token count, from
    ``base_shift`` at ``base_seq_len`` tokens to ``max_shift`` at ``max_seq_len``.

    diffusers 0.42.1: ``calculate_shift`` in diffusers/pipelines/flux/pipeline_flux.py (module-level, not
    exported by ``diffusers``; the SD3 pipeline has a copy). pxpo sets the scheduler's timesteps itself
    for schedulers with ``use_dynamic_shifting`` and must shift them as the pipeline does.
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_calculate_shift

    return diffusers_calculate_shift(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift)


# SDXL ------------------------------------------------------------------------------------------------------
if TYPE_CHECKING:
    from diffusers import StableDiffusionXLPipeline


def sdxl_add_time_ids(
    pipe: StableDiffusionXLPipeline,
    original_size: tuple[int, int],
    crops_coords_top_left: tuple[int, int],
    target_size: tuple[int, int],
    dtype: torch.dtype,
    text_encoder_projection_dim: int,
) -> torch.Tensor:
    """SDXL's micro-conditioning ``time_ids`` [1, 6]: (original H, W, crop top, left, target H, W), checked against
    the UNet's added-embedding width (a one-line ValueError when the UNet's config does not fit).

    diffusers 0.42.1: ``StableDiffusionXLPipeline._get_add_time_ids`` (diffusers/pipelines/stable_diffusion_xl/
    pipeline_stable_diffusion_xl.py, a method). pxpo calls the UNet itself and must give it the ids the
    pipeline would (its default: original = target = the image size, crop (0, 0)).
    """
    return pipe._get_add_time_ids(original_size, crops_coords_top_left, target_size, dtype, text_encoder_projection_dim)


# Qwen-Image ------------------------------------------------------------------------------------------------
def qwen_image_pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, C, h, w] -> Qwen-Image tokens [B, (h/2)(w/2), 4C]: each 2 x 2 patch becomes one token.

    diffusers 0.42.1: ``QwenImagePipeline._pack_latents`` (diffusers/pipelines/qwenimage/pipeline_qwenimage.py, a
    static method; the pipeline packs its noise [B, 1, C, h, w], whose one frame is pxpo's grid). pxpo keeps the
    latents on the grid and packs them for each transformer call, in the layout Qwen-Image was trained on.
    """
    from diffusers import QwenImagePipeline

    b, c, h, w = latents.shape
    return QwenImagePipeline._pack_latents(latents, b, c, h, w)


def qwen_image_unpack_latents(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """Qwen-Image tokens [B, (h/2)(w/2), 4C] -> latents [B, C, h, w]; the inverse of ``qwen_image_pack_latents``.

    diffusers 0.42.1: ``QwenImagePipeline._unpack_latents`` (diffusers/pipelines/qwenimage/pipeline_qwenimage.py, a
    static method taking pixel sizes and the VAE's scale factor, returning the VAE's [B, C, 1, h, w]; with a scale
    factor of 1 the sizes are the grid's, and pxpo drops the one frame). pxpo unpacks the velocity at every step.
    """
    from diffusers import QwenImagePipeline

    return QwenImagePipeline._unpack_latents(tokens, latent_height, latent_width, 1)[:, :, 0]


# FLUX.2 ----------------------------------------------------------------------------------------------------
# (Flux2KleinPipeline's copies of these are marked "Copied from diffusers.pipelines.flux2.pipeline_flux2".)
def flux2_patchify_latents(latents: torch.Tensor) -> torch.Tensor:
    """VAE latents [B, C, h, w] -> FLUX.2's patchified latents [B, 4C, h/2, w/2]: each 2 x 2 patch stacked in channels.

    diffusers 0.42.1: ``Flux2Pipeline._patchify_latents`` (diffusers/pipelines/flux2/pipeline_flux2.py, a static
    method). FLUX.2 draws its noise, normalises latents (the VAE's batch norm) and makes tokens in this layout;
    pxpo's grid is the unpatchified one, so it patchifies for the transformer and the batch-norm statistics.
    """
    from diffusers import Flux2Pipeline

    return Flux2Pipeline._patchify_latents(latents)


def flux2_unpatchify_latents(latents: torch.Tensor) -> torch.Tensor:
    """Patchified latents [B, 4C, h/2, w/2] -> VAE latents [B, C, h, w]; the inverse of ``flux2_patchify_latents``.

    diffusers 0.42.1: ``Flux2Pipeline._unpatchify_latents`` (diffusers/pipelines/flux2/pipeline_flux2.py, a static
    method; the pipeline unpatchifies before decoding). pxpo unpatchifies the initial noise, the velocity and the
    denormalised latents.
    """
    from diffusers import Flux2Pipeline

    return Flux2Pipeline._unpatchify_latents(latents)


def flux2_pack_latents(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE latents [B, C, h, w] -> FLUX.2 tokens [B, (h/2)(w/2), 4C] and their position ids [B, (h/2)(w/2), 4].

    diffusers 0.42.1: ``Flux2Pipeline._patchify_latents``, ``_pack_latents`` and ``_prepare_latent_ids``
    (diffusers/pipelines/flux2/pipeline_flux2.py, static methods; ``prepare_latents`` packs the patchified noise
    and makes the ids (t, row, column, 0) the same way). pxpo calls the transformer itself (``img_ids``).
    """
    from diffusers import Flux2Pipeline

    patched = Flux2Pipeline._patchify_latents(latents)
    return Flux2Pipeline._pack_latents(patched), Flux2Pipeline._prepare_latent_ids(patched).to(latents.device)


def flux2_unpack_latents(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """FLUX.2 tokens [B, (h/2)(w/2), 4C] at position ids [B, (h/2)(w/2), 4] -> VAE latents [B, C, h, w]; the inverse
    of ``flux2_pack_latents``.

    diffusers 0.42.1: ``Flux2Pipeline._unpack_latents_with_ids`` (scatters tokens to their ids' rows and columns)
    and ``_unpatchify_latents`` (diffusers/pipelines/flux2/pipeline_flux2.py, static methods; the pipeline unpacks
    its final latents so before decoding). pxpo unpacks the transformer's velocity at every step.
    """
    from diffusers import Flux2Pipeline

    return Flux2Pipeline._unpatchify_latents(Flux2Pipeline._unpack_latents_with_ids(tokens, ids))


def flux2_prepare_text_ids(embeds: torch.Tensor) -> torch.Tensor:
    """The FLUX.2 transformer's text position ids [B, L, 4] (0, 0, 0, token index) for text embeddings [B, L, D].

    diffusers 0.42.1: ``Flux2Pipeline._prepare_text_ids`` (diffusers/pipelines/flux2/pipeline_flux2.py, a static
    method ``encode_prompt`` calls). pxpo stores the embeddings only and gives the transformer the ids the
    pipeline would (``txt_ids``).
    """
    from diffusers import Flux2Pipeline

    return Flux2Pipeline._prepare_text_ids(embeds).to(embeds.device)


def flux2_empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's timestep shift mu for ``image_seq_len`` tokens and ``num_steps`` steps (BFL's empirical fit).

    diffusers 0.42.1: ``compute_empirical_mu`` in diffusers/pipelines/flux2/pipeline_flux2.py (module-level, not
    exported; klein's pipeline has a copy). Both pipelines pass it to ``set_timesteps`` with their sigmas; pxpo
    sets the scheduler's timesteps itself and must shift them as the pipeline does.
    """
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    return compute_empirical_mu(image_seq_len, num_steps)


# Z-Image ---------------------------------------------------------------------------------------------------
def z_image_sigmas(num_steps: int) -> list[float]:
    """The sigmas [num_steps] ZImagePipeline passes to ``set_timesteps``: 1 down to 1 / num_steps, evenly spaced
    (float32 values; the scheduler's shift is applied to them by ``set_timesteps``).

    diffusers 0.42.1: ``get_default_z_image_sigmas`` in diffusers/pipelines/z_image/pipeline_z_image.py (module-level,
    not exported by ``diffusers``). pxpo sets the scheduler's timesteps itself and must set the very values the
    pipeline does (its float32 linspace, not a float64 one), so that its deterministic limit is the pipeline's sampler.
    """
    from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

    return get_default_z_image_sigmas(num_steps)
