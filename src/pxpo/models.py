"""Loading pipelines and segmenters by registered name, local folder or hub id; the model registry.

Bundled and built-in models register themselves (``pxpo.world`` registers ``pxpo-tiny``,
``pxpo-tiny-flow``, ``pxpo-tiny-seg`` and the random ``tiny-random*`` pipelines), the way rewards do;
this module knows none of them by name. Registering and checking names imports no torch, diffusers or
transformers (``import pxpo`` registers the bundled world); the functions that load import them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pxpo.quiet import disable_loading_bars

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

PipelineSource = Path | Callable[[], "DiffusionPipeline"]

_PIPELINES: dict[str, PipelineSource] = {}
_SEGMENTERS: dict[str, Path] = {}
DEFAULT_PIPELINE = "pxpo-tiny"
DEFAULT_SEGMENTER = "pxpo-tiny-seg"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def register_pipeline(name: str, source: PipelineSource) -> None:
    """Make ``name`` load a pipeline from a folder (``Path``) or build one in code (a callable)."""
    _PIPELINES[name] = source


def register_segmenter(name: str, folder: Path) -> None:
    """Make ``name`` load a transformers segmentation model from ``folder``."""
    _SEGMENTERS[name] = folder


def registered_pipelines() -> list[str]:
    return sorted(_PIPELINES)


def check_model_reference(name_or_path: str, registry: dict[str, object] | None = None) -> str:
    """Check, without loading, that a model reference can mean something; return it.

    Valid: a registered name, an existing folder, or a hub id of the form ``org/name``.
    """
    names = _PIPELINES if registry is None else registry
    if name_or_path in names or Path(name_or_path).expanduser().is_dir():
        return name_or_path
    suffix = Path(name_or_path).suffix.lower()
    if registry is None and suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
        if suffix != ".safetensors":
            raise ValueError(f"{name_or_path!r}: pxpo loads single-file checkpoints only as .safetensors (a {suffix} file is a pickle)")
        if not Path(name_or_path).expanduser().is_file():
            raise ValueError(f"{name_or_path!r}: no such file")
        return name_or_path
    looks_like_path = name_or_path.startswith((".", "/", "~")) or os.sep + os.sep in name_or_path
    parent = Path(name_or_path).expanduser().parent
    if _HUB_ID.match(name_or_path) and parent.is_dir():  # "runs/typo": a folder here, not a hub organisation
        raise ValueError(f"{name_or_path!r}: there is no folder of that name in {str(parent)!r} (and it is not a registered model)")
    if looks_like_path or not _HUB_ID.match(name_or_path):
        random = [name.removeprefix("tiny-random-") for name in sorted(names) if name.startswith("tiny-random-")]
        shown = [name for name in sorted(names) if not name.startswith("tiny-random-")]
        shown += ["tiny-random-{" + ",".join(random) + "}"] if random else []  # the random test pipelines, one per family
        raise ValueError(f"{name_or_path!r} is not an existing folder, a hub id (org/name) nor a registered model ({', '.join(shown)})")
    return name_or_path


def _resolve(name_or_path: str, registry: dict[str, Path], index_file: str) -> tuple[str, str]:
    """(what to pass to from_pretrained, how to describe it in an error). A hub id that can be neither read from the
    local cache nor fetched (offline, or the hub unreachable) stops here, in one line (``_check_hub``)."""
    if name_or_path in registry:
        if not registry[name_or_path].is_dir():
            raise ValueError(f"bundled model {name_or_path!r} is missing from {registry[name_or_path]} (re-run `pxpo pretrain`)")
        return str(registry[name_or_path]), f"bundled model {name_or_path!r}"
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return str(local), f"folder {name_or_path!r}"
    _check_hub(name_or_path, index_file)
    return name_or_path, f"hub id {name_or_path!r}"


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, now or when huggingface_hub was imported."""
    from huggingface_hub import constants

    now = any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return now or constants.is_offline_mode()


def _offline_advice(repo_id: str) -> str:
    return (
        f"use a local folder of the model instead (`hf download {repo_id} --local-dir DIR` where the hub is reachable), "
        "or run with network access"
    )


def _one_line(error: Exception) -> str:
    """An error's message on one line (diffusers and transformers write paragraphs)."""
    return " ".join(str(error).split())


def _offline_hint(name_or_path: str, what: str) -> str:
    """For a hub id that failed to load offline (some of its files are not cached): what to do."""
    if what.startswith("hub id") and _hub_offline():
        return f" (HF_HUB_OFFLINE is set and some of its files are not in the local cache: {_offline_advice(name_or_path)})"
    return ""


def _ignore_hub_download_warnings() -> None:
    """diffusers passes huggingface_hub an argument it deprecated; the warning says nothing to a pxpo user."""
    import warnings

    warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated", category=UserWarning)


def _check_hub(repo_id: str, index_file: str) -> None:
    """Raise one line when the hub id ``repo_id`` is not in the local cache and cannot be fetched: offline mode, or
    the hub does not answer (one request, no retries: huggingface_hub would retry for half a minute, logging each try)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import get_session

    if isinstance(try_to_load_from_cache(repo_id, index_file), str):
        return  # cached: loads offline too
    if _hub_offline():
        raise ValueError(
            f"hub id {repo_id!r} cannot be fetched offline (HF_HUB_OFFLINE is set) and is not in the local cache: "
            f"{_offline_advice(repo_id)} and HF_HUB_OFFLINE unset"
        )
    try:
        get_session().head(constants.ENDPOINT, timeout=10)
    except Exception as error:  # noqa: BLE001  (DNS, refused, timeout, proxy, TLS: all mean "cannot reach it")
        raise ValueError(
            f"hub id {repo_id!r} cannot be fetched: the hub ({constants.ENDPOINT}) cannot be reached ({_one_line(error)}) "
            f"and the model is not in the local cache: {_offline_advice(repo_id)}"
        ) from None


def load_single_file(path: str, config: str | None = None, torch_dtype: torch.dtype | None = None) -> DiffusionPipeline:
    """A pipeline from one original-format ``.safetensors`` checkpoint (e.g. a community SD v1.5 fine-tune).

    ``config``: a diffusers-layout folder or hub id with the same architecture (its ``model_index.json``
    names the pipeline class; default StableDiffusionPipeline). diffusers' ``from_single_file`` converts
    the weights; without ``config`` it fetches the architecture's configs from the hub. ``torch_dtype``:
    default float32.
    """
    import diffusers
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    class_name = "StableDiffusionPipeline"
    if config is not None and Path(config).expanduser().is_dir():
        class_name = DiffusionPipeline.load_config(config).get("_class_name", class_name)
    pipeline_class = getattr(diffusers, class_name)
    extra = {"safety_checker": None, "requires_safety_checker": False} if class_name == "StableDiffusionPipeline" else {}
    try:
        return pipeline_class.from_single_file(path, config=config, torch_dtype=torch_dtype or torch.float32, **extra)
    except (OSError, ValueError, KeyError, SingleFileComponentError) as error:
        raise ValueError(f"cannot load a {class_name} from the single file {path!r}: {error}") from error


def load_pipeline(name_or_path: str, torch_dtype: torch.dtype | None = None, single_file_config: str | None = None) -> DiffusionPipeline:
    """A pipeline of a supported family, ready to sample as a policy.

    ``name_or_path``: a registered name (``pxpo-tiny``, ``pxpo-tiny-flow``, ``tiny-random``, ...), a
    local folder or a hub id of a StableDiffusionPipeline, StableDiffusion3Pipeline or FluxPipeline
    (e.g. ``CompVis/stable-diffusion-v1-4``, ``stabilityai/stable-diffusion-3.5-medium``,
    ``black-forest-labs/FLUX.1-dev``), or a single-file ``.safetensors`` checkpoint (``load_single_file``,
    with ``single_file_config`` naming its architecture). The family's sampler is set up as for an injected pipeline
    (``pxpo.families``): SD's scheduler becomes a DDIMScheduler with ``set_alpha_to_one`` off. No
    safety checker is loaded. ``torch_dtype``: default float32.
    """
    import torch
    from diffusers import DiffusionPipeline

    from pxpo.families import family_for

    torch_dtype = torch_dtype or torch.float32
    check_model_reference(name_or_path)
    disable_loading_bars()
    source = _PIPELINES.get(name_or_path)
    if source is None and Path(name_or_path).expanduser().is_file():
        pipe = load_single_file(name_or_path, single_file_config, torch_dtype)
    elif callable(source):
        pipe = source()
        if torch_dtype != torch.float32:
            pipe.to(dtype=torch_dtype)
    else:
        where, what = _resolve(name_or_path, {k: v for k, v in _PIPELINES.items() if isinstance(v, Path)}, "model_index.json")
        try:
            _ignore_hub_download_warnings()
            index = DiffusionPipeline.load_config(where)
            # components saved as absent (e.g. SD3 without T5: [null, null]) must be passed as None
            extra = {name: None for name, value in index.items() if isinstance(value, list) and value == [None, None]}
            if index.get("_class_name") == "StableDiffusionPipeline":
                extra.update(safety_checker=None, requires_safety_checker=False)
            pipe = DiffusionPipeline.from_pretrained(where, dtype=torch_dtype, **extra)
        except (OSError, ValueError) as error:
            hint = _offline_hint(name_or_path, what)
            raise ValueError(f"cannot load a pipeline from {what}: {_one_line(error)}{hint}") from error
    family_for(pipe)  # a clear error for an unsupported class; sets up the family's scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_segmenter(name_or_path: str = DEFAULT_SEGMENTER):
    """A transformers semantic-segmentation model (eval mode, with ``config.id2label``) and its image processor.

    ``name_or_path``: the bundled ``"pxpo-tiny-seg"``, a local folder, or a hub id such as
    ``"mattmdjaga/segformer_b2_clothes"``.
    """
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    check_model_reference(name_or_path, _SEGMENTERS)
    disable_loading_bars()
    source, what = _resolve(name_or_path, _SEGMENTERS, "config.json")
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        hint = _offline_hint(name_or_path, what)
        raise ValueError(f"cannot load a semantic-segmentation model from {what}: {_one_line(error)}{hint}") from error
    return model.eval().requires_grad_(False), processor


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require gradients, by name (LoRA weights, or the whole denoiser)."""
    return {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what ``trainable_state_dict`` saved; the names must match exactly."""
    expected = {name for name, p in module.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(f"checkpoint does not match the model's trainable parameters (missing {missing}, unexpected {extra})")
    import torch

    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
