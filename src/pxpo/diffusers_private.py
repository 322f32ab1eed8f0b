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
