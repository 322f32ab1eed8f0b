"""Model families: everything that differs between Stable Diffusion, SD3 and FLUX, behind one interface.

The trainer, rewards, advantages, losses, run folder, CLI and app never look inside a pipeline;
they ask its family (``family_for(pipe)``) to encode prompts, call the denoiser, take a policy step
with its log-probability, decode latents and save LoRA weights. Latents always live on the family's
latent grid [B, C, h, w], where pixel heatmaps are downsampled to meet them.

A new family is one new module: subclass ``ModelFamily`` and decorate it with
``@register_family("DiffusersPipelineClassName", ...)``.

Shapes: B batch, C latent channels, h x w latent grid, H x W pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from diffusers.utils.torch_utils import randn_tensor
from peft import LoraConfig, get_peft_model_state_dict

from pxpo.io import atomic_directory
from pxpo.sampling import Conditioning, Generator, StepOutput

_FAMILIES: dict[str, type[ModelFamily]] = {}


def register_family(*pipeline_classes: str) -> Callable[[type[ModelFamily]], type[ModelFamily]]:
    """Class decorator: the family handles pipelines of these diffusers class names."""

    def decorate(cls: type[ModelFamily]) -> type[ModelFamily]:
        for name in pipeline_classes:
            _FAMILIES[name] = cls
        cls.pipeline_classes = pipeline_classes
        return cls

    return decorate


def supported_pipelines() -> list[str]:
    """Names of the diffusers pipeline classes pxpo trains."""
    return sorted(_FAMILIES)


class ModelFamily:
    """A pipeline seen as a policy. Subclasses fill in the family-specific parts.

    Attributes:
        pipe: the diffusers pipeline (its scheduler is the sampler; its denoiser is trained).
        name: a short name ("sd", "sd3", "flux").
        denoiser_name: the pipeline attribute holding the trained network ("unet" or "transformer").
        lora_targets: module names LoRA adapts in the denoiser.
    """

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    denoiser_name: ClassVar[str]
    lora_targets: ClassVar[tuple[str, ...]]
    lora_layers_argument: ClassVar[str]  # the save_lora_weights keyword for the denoiser's layers
    lora_key_format: ClassVar[str] = "peft"  # "diffusers": keys converted as diffusers' UNet LoRA scripts do
    sde_types: ClassVar[tuple[str, ...]] = ("sde",)  # the policy steps this family can take (``sample.sde_type``)

    def __init__(self, pipe: DiffusionPipeline, sde_type: str = "sde") -> None:
        if sde_type not in self.sde_types:
            expected = " or ".join(repr(kind) for kind in self.sde_types)
            raise ValueError(f"sample.sde_type = {sde_type!r}: a {type(pipe).__name__} ({self.name} family) samples with {expected} only")
        self.pipe, self.sde_type = pipe, sde_type
        self.prepare_scheduler()

    # components -------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        """The trained network (a UNet or a transformer)."""
        return getattr(self.pipe, self.denoiser_name)

    @denoiser.setter
    def denoiser(self, module: torch.nn.Module) -> None:
        setattr(self.pipe, self.denoiser_name, module)

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        """The frozen text encoders present in the pipeline."""
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [module for name in names if (module := getattr(self.pipe, name, None)) is not None]

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    # the policy ------------------------------------------------------------------------------------
    def prepare_scheduler(self) -> None:
        """Check (and where needed rebuild) the pipeline's scheduler as this family's sampler."""
        raise NotImplementedError

    def default_size(self) -> tuple[int, int]:
        """The model's native image size (H, W) in pixels."""
        raise NotImplementedError

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the VAE's downsampling, times FLUX's 2 x 2 packing)."""
        return self.pipe.vae_scale_factor

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(C, h, w) of the latents for an image of height x width pixels (both or neither; default: native).

        The one place where image sizes become latent sizes; sizes that do not fit are refused.
        """
        if (height is None) != (width is None):
            raise ValueError(f"height = {height}, width = {width}: give both or neither")
        if height is None:
            height, width = self.default_size()
        m = self.size_multiple
        if height <= 0 or width <= 0 or height % m or width % m:
            raise ValueError(f"image size {height} x {width}: {type(self.pipe).__name__} needs positive multiples of {m} pixels")
        factor = self.pipe.vae_scale_factor
        return self.latent_channels, height // factor, width // factor

    @property
    def latent_channels(self) -> int:
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str], guidance_scale: float) -> Conditioning:
        """Text conditioning of B prompts (with the unconditional branch when the family uses CFG)."""
        raise NotImplementedError

    def set_timesteps(self, num_steps: int, latent_shape: tuple[int, int, int]) -> torch.Tensor:
        """Set the scheduler to ``num_steps`` steps; return its timesteps [T]."""
        raise NotImplementedError

    def initial_noise(self, batch: int, latent_shape: tuple[int, int, int], generator: Generator) -> torch.Tensor:
        """The initial latents [B, C, h, w] (one generator per sample gives per-sample seeds)."""
        shape = (batch, *latent_shape)
        sigma = float(getattr(self.pipe.scheduler, "init_noise_sigma", 1.0))
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32) * sigma

    def predict(
        self, denoiser: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning, guidance_scale: float
    ) -> torch.Tensor:
        """The (guided) model output [B, C, h, w] for latents [B, C, h, w] at timesteps [B]."""
        raise NotImplementedError

    def policy_noise(self, eta: float, noise_level: float) -> float:
        """The policy's noise setting that this family uses: DDIM's ``eta`` or the flow SDE's ``noise_level``."""
        raise NotImplementedError

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        noise_level: float,
        prev_sample: torch.Tensor | None = None,
        generator: Generator = None,
    ) -> StepOutput:
        """One policy step with its per-element log-probability."""
        raise NotImplementedError

    def deterministic_step(self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The sampler's deterministic step [B, C, h, w] (DDIM at eta = 0, the flow ODE): the steps outside an SDE window."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents [B, C, h, w] -> float32 images [B, 3, H, W] in [0, 1]."""
        raise NotImplementedError

    # LoRA -----------------------------------------------------------------------------------------
    def add_lora(self, rank: int, alpha: float | None = None) -> None:
        """Add a trainable LoRA adapter (peft) to the denoiser's attention projections; freeze the rest.

        The adapter starts as the identity (LoRA's B matrices are zero), so the first samples are the
        base model's.
        """
        self.denoiser.requires_grad_(False)
        self.denoiser.add_adapter(
            LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(self.lora_targets))
        )

    def save_lora(self, denoiser: torch.nn.Module, folder: str | Path) -> None:
        """Write the denoiser's LoRA so that this pipeline class's ``load_lora_weights(folder)`` loads it.

        The folder is replaced whole and atomically.
        """
        layers = get_peft_model_state_dict(denoiser)
        if self.lora_key_format == "diffusers":
            layers = convert_state_dict_to_diffusers(layers)
        with atomic_directory(folder) as tmp:
            type(self.pipe).save_lora_weights(tmp, **{self.lora_layers_argument: layers}, safe_serialization=True)


def guided_call(
    call: Callable[..., torch.Tensor],
    inputs: dict[str, torch.Tensor],
    negatives: dict[str, torch.Tensor] | None,
    guidance_scale: float,
    rescale: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Classifier-free guidance around a denoiser call: ``call(**inputs)`` [B, ...] alone when there is no guidance
    (``negatives`` None or ``guidance_scale`` <= 1); otherwise one call on the unconditional and conditional halves
    batched together [2B, ...] (``negatives`` replaces the inputs it names, the others are repeated), mixed as
    uncond + w * (cond - uncond), then ``rescale(mixed, cond)`` when given (Qwen-Image rescales to cond's norm)."""
    if negatives is None or guidance_scale <= 1:
        return call(**inputs)
    both = call(**{key: torch.cat([negatives.get(key, value), value]) for key, value in inputs.items()})
    uncond, cond = both.chunk(2)
    mixed = uncond + guidance_scale * (cond - uncond)
    return mixed if rescale is None else rescale(mixed, cond)


def family_for(pipe: DiffusionPipeline, sde_type: str = "sde") -> ModelFamily:
    """The family of a pipeline, detected from its class (or a base class), taking ``sde_type`` policy steps
    (``sample.sde_type``); a clear error if unsupported."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in _FAMILIES:
            return _FAMILIES[cls.__name__](pipe, sde_type)
    raise ValueError(
        f"pxpo cannot train a {type(pipe).__name__}: supported pipeline classes are {', '.join(supported_pipelines())}"
    )


def as_family(model: DiffusionPipeline | ModelFamily) -> ModelFamily:
    """``model`` if it is a family, else the family of the pipeline."""
    return model if isinstance(model, ModelFamily) else family_for(model)


# The built-in families register themselves on import.
from pxpo.families import flux, flux2, qwen_image, sd, sd3, sdxl, z_image  # noqa: E402,F401

__all__ = ["ModelFamily", "as_family", "family_for", "register_family", "supported_pipelines"]
