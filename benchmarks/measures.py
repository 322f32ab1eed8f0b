"""What the benchmarks measure on images and policies, written against pxpo's public API.

- ``single_image_draws``: what the policy now makes of a single-image run's image (its x_T finished with
  other step-noise draws), rather than the one draw a person was shown;
- ``class_fractions`` / ``mean_class_fractions``: how much of each image the bundled segmenter assigns to
  some classes;
- ``context_change``: how much the evaluation images changed outside the classes a task targets;
- ``segment``: the segmenter's class name for each pixel.

Import ``_common`` before this module (it imports torch).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from pxpo.models import load_segmenter
from pxpo.rewards.segmentation import class_probabilities
from pxpo.rollout import sample_trajectories
from pxpo.trainer import Trainer

SEGMENTER = "pxpo-tiny-seg"


@torch.no_grad()
def single_image_draws(trainer: Trainer, num_draws: int, seed: int = 10_000) -> torch.Tensor:
    """Single-image mode: the image's x_T finished with ``num_draws`` other step-noise draws [N, 3, H, W].

    One shown image is one draw of the policy; averaging a measurement over these draws tells what the
    policy now makes of this image. The draws' steps use seeds ``seed``, ``seed + 1``, ...
    """
    cfg = trainer.config.sample
    if cfg.single_image_seed is None:
        raise ValueError("single_image_draws needs single-image mode (sample.single_image_seed)")
    device = trainer.accelerator.device
    x_T = trainer.family.initial_noise(1, trainer.latent_shape, torch.Generator(device=device).manual_seed(cfg.single_image_seed))
    trainer.family.denoiser.eval()
    with trainer.accelerator.autocast():
        return sample_trajectories(
            trainer.family,
            [cfg.prompts[0]] * num_draws,
            num_steps=cfg.num_steps,
            guidance_scale=cfg.guidance_scale,
            noise_level=trainer.family.policy_noise(cfg.eta, cfg.noise_level),
            generator=[torch.Generator(device=device).manual_seed(seed + i) for i in range(num_draws)],
            initial_noise=x_T.expand(num_draws, -1, -1, -1),
            height=cfg.height,
            width=cfg.width,
            adapter_steps=trainer.config.adapter_steps,  # the LoRA on the trained window's steps only, as the trainer samples
        ).images


@functools.lru_cache(maxsize=2)
def _segmenter(model: str):
    """The segmenter measurements use, loaded once per model (measurements repeat)."""
    return load_segmenter(model)


def class_fractions(images: torch.Tensor, classes: Sequence[str], model: str = SEGMENTER) -> dict[str, list[float]]:
    """Fraction of each image's pixels [B, 3, H, W] that the segmenter assigns to each class: {class: [B values]}."""
    segmenter, processor = _segmenter(model)
    labels = class_probabilities(segmenter, processor, images).argmax(dim=1)
    by_name = {str(v).lower(): int(k) for k, v in segmenter.config.id2label.items()}
    return {c: (labels == by_name[c]).float().mean(dim=(1, 2)).tolist() for c in classes}


def mean_class_fractions(images: torch.Tensor, classes: Sequence[str], model: str = SEGMENTER) -> dict[str, float]:
    """class_fractions averaged over the images: {class: mean fraction}."""
    return {c: float(np.mean(values)) for c, values in class_fractions(images, classes, model).items()}


def read_image(path) -> np.ndarray:
    """A saved image as float [H, W, 3] in 0..255."""
    return np.asarray(Image.open(path).convert("RGB")).astype(float)


def context_change(trainer: Trainer, targeted: Sequence[str], last_epoch: int, model: str = SEGMENTER) -> float:
    """Mean |pixel change| (0-255) between the evaluation images of epoch 0 and ``last_epoch``, on the pixels that
    the segmenter does not put in a ``targeted`` class on epoch 0's images (every pixel when none is targeted)."""
    seeds = trainer.config.eval.seeds
    first, last = (np.stack([read_image(trainer.run.eval_image_path(e, s)) for s in seeds]) for e in (0, last_epoch))
    mask = np.ones(first.shape[:3], dtype=bool)
    if targeted:
        segmenter, processor = _segmenter(model)
        images = torch.from_numpy(first).permute(0, 3, 1, 2).float() / 255
        labels = class_probabilities(segmenter, processor, images).argmax(dim=1).numpy()
        ids = [int(k) for k, v in segmenter.config.id2label.items() if v in targeted]
        mask = ~np.isin(labels, ids)
    return float(np.abs(last - first).mean(axis=-1)[mask].mean())


def segment(images: np.ndarray, model: str = SEGMENTER) -> np.ndarray:
    """The class name the segmenter gives each pixel of images [N, H, W, 3] in 0..255: [N, H, W] strings, lower case."""
    segmenter, processor = _segmenter(model)
    labels = class_probabilities(segmenter, processor, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(dim=1)
    names = np.array([str(segmenter.config.id2label[k]).lower() for k in sorted(segmenter.config.id2label, key=int)])
    return names[labels.cpu().numpy()]
