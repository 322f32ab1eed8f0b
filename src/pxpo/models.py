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

WEIGHTS = Path(__file__).parent / "world" / "weights"
# Short names of the models pxpo ships (folders in the package) or builds in code.
BUNDLED_PIPELINES = {"pxpo-tiny": WEIGHTS / "pxpo-tiny"}
BUNDLED_SEGMENTERS = {"pxpo-tiny-seg": WEIGHTS / "pxpo-tiny-seg"}
BUILT_PIPELINES: dict[str, Callable[[], StableDiffusionPipeline]] = {}
DEFAULT_PIPELINE = "pxpo-tiny"
DEFAULT_SEGMENTER = "pxpo-tiny-seg"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _register_built() -> None:
    from pxpo.world.architecture import build_tiny_pipeline

    BUILT_PIPELINES["tiny-random"] = build_tiny_pipeline


_register_built()


def check_model_reference(name_or_path: str, bundled: dict[str, Path] | None = None) -> str:
    """Check, without loading, that a model reference can mean something; return it.

    Valid: a bundled or built-in name, an existing folder, or a hub id of the form ``org/name``.
    """
    names = {**BUNDLED_PIPELINES, **BUILT_PIPELINES} if bundled is None else bundled
    if name_or_path in names or Path(name_or_path).expanduser().is_dir():
        return name_or_path
    looks_like_path = name_or_path.startswith((".", "/", "~")) or os.sep + os.sep in name_or_path
    if looks_like_path or not _HUB_ID.match(name_or_path):
        raise ValueError(
            f"{name_or_path!r} is not an existing folder, a hub id (org/name) nor a bundled model ({', '.join(sorted(names))})"
        )
    return name_or_path


def _resolve(name_or_path: str, bundled: dict[str, Path]) -> tuple[str, str]:
    """(what to pass to from_pretrained, how to describe it in an error)."""
    if name_or_path in bundled:
        if not bundled[name_or_path].is_dir():
            raise ValueError(f"bundled model {name_or_path!r} is missing from {bundled[name_or_path]} (re-run `pxpo pretrain`)")
        return str(bundled[name_or_path]), f"bundled model {name_or_path!r}"
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return str(local), f"folder {name_or_path!r}"
    return name_or_path, f"hub id {name_or_path!r} (no local folder of that name; is the hub reachable?)"


def load_pipeline(name_or_path: str, torch_dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline with a DDIMScheduler, from a bundled name, a local folder or a hub id.

    The scheduler is rebuilt as a DDIMScheduler from the checkpoint's scheduler config (SD v1.4 ships
    PNDM). ``set_alpha_to_one`` is set to False when the config has it True, because that makes the
    last step deterministic and its log-probability undefined (a notice is logged). No safety checker
    is loaded.
    """
    check_model_reference(name_or_path)
    if name_or_path in BUILT_PIPELINES:
        pipe = BUILT_PIPELINES[name_or_path]()
        if torch_dtype != torch.float32:
            pipe.to(dtype=torch_dtype)
    else:
        source, what = _resolve(name_or_path, BUNDLED_PIPELINES)
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                source, dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
            )
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot load a StableDiffusionPipeline from {what}: {error}") from error
    config = dict(pipe.scheduler.config)
    if config.get("set_alpha_to_one", False):
        logger.info("set_alpha_to_one=True would make the last DDIM step deterministic; pxpo uses False")
        config["set_alpha_to_one"] = False
    pipe.scheduler = DDIMScheduler.from_config(config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_segmenter(name_or_path: str = DEFAULT_SEGMENTER):
    """A transformers semantic-segmentation model (eval mode, with ``config.id2label``) and its image processor.

    ``name_or_path``: the bundled ``"pxpo-tiny-seg"``, a local folder, or a hub id such as
    ``"mattmdjaga/segformer_b2_clothes"``.
    """
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    check_model_reference(name_or_path, BUNDLED_SEGMENTERS)
    source, what = _resolve(name_or_path, BUNDLED_SEGMENTERS)
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a semantic-segmentation model from {what}: {error}") from error
    return model.eval().requires_grad_(False), processor


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
