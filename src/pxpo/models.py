"""Loading pipelines (bundled name, local folder or hub id) and LoRA set-up and saving."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict

from pxpo.io import atomic_directory

logger = logging.getLogger(__name__)

# Names of models that pxpo builds or ships itself; anything else is a local folder or a hub id.
BUILTIN_PIPELINES: dict[str, Callable[[], StableDiffusionPipeline]] = {}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _register_builtins() -> None:
    from pxpo.world.architecture import build_tiny_pipeline

    BUILTIN_PIPELINES["tiny-random"] = build_tiny_pipeline


_register_builtins()


def check_model_reference(name_or_path: str) -> str:
    """Check, without loading, that a model reference can mean something; return it.

    Valid: a builtin name, an existing folder, or a hub id of the form ``org/name``.
    """
    if name_or_path in BUILTIN_PIPELINES or Path(name_or_path).expanduser().is_dir():
        return name_or_path
    looks_like_path = name_or_path.startswith((".", "/", "~")) or os.sep + os.sep in name_or_path
    if looks_like_path or not _HUB_ID.match(name_or_path):
        raise ValueError(
            f"{name_or_path!r} is not an existing folder, a hub id (org/name) nor a bundled model "
            f"({', '.join(sorted(BUILTIN_PIPELINES))})"
        )
    return name_or_path


def load_pipeline(name_or_path: str, torch_dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline with a DDIMScheduler, from a bundled name, a local folder or a hub id.

    The scheduler is rebuilt as a DDIMScheduler from the checkpoint's scheduler config (SD v1.4 ships
    PNDM). ``set_alpha_to_one`` is set to False when the config has it True, because that makes the
    last step deterministic and its log-probability undefined (a notice is logged). No safety checker
    is loaded.
    """
    check_model_reference(name_or_path)
    if name_or_path in BUILTIN_PIPELINES:
        pipe = BUILTIN_PIPELINES[name_or_path]().to(dtype=torch_dtype)
    else:
        local = Path(name_or_path).expanduser()
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(local) if local.is_dir() else name_or_path,
                dtype=torch_dtype,
                safety_checker=None,
                requires_safety_checker=False,
            )
        except (OSError, ValueError) as error:
            where = "folder" if local.is_dir() else "hub id (no local folder of that name; is the hub reachable?)"
            raise ValueError(f"cannot load a StableDiffusionPipeline from {where} {name_or_path!r}: {error}") from error
    config = dict(pipe.scheduler.config)
    if config.get("set_alpha_to_one", False):
        logger.info("set_alpha_to_one=True would make the last DDIM step deterministic; pxpo uses False")
        config["set_alpha_to_one"] = False
    pipe.scheduler = DDIMScheduler.from_config(config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def add_lora(unet: torch.nn.Module, rank: int, alpha: float | None = None) -> None:
    """Add a trainable LoRA adapter (peft) to the UNet's attention projections; freeze the rest.

    The adapter starts as the identity (LoRA's B matrices are zero), so the first samples are the
    base model's.
    """
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS))
    )


def save_lora(unet: torch.nn.Module, folder: str | Path) -> None:
    """Write the UNet's LoRA so that ``StableDiffusionPipeline.load_lora_weights(folder)`` loads it.

    The folder is replaced whole and atomically.
    """
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    with atomic_directory(folder) as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require gradients, by name (LoRA weights, or the whole UNet)."""
    return {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what ``trainable_state_dict`` saved; the names must match exactly."""
    expected = {name for name, p in module.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(f"checkpoint does not match the model's trainable parameters (missing {missing}, unexpected {extra})")
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
