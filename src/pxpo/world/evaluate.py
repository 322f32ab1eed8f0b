"""How good is the bundled world? Segmenter IoU on held-out renders; class presence in generated samples."""

from __future__ import annotations

import numpy as np
import torch

from pxpo.rewards.segmentation import class_probabilities
from pxpo.rollout import sample_trajectories
from pxpo.world.pretrain import HELD_OUT_SEED
from pxpo.world.scenes import CLASSES, FAMILY_PROMPTS, KEY_CLASSES, class_presence, render_dataset


def segment(model, processor, images: torch.Tensor) -> np.ndarray:
    """Predicted label maps [B, H, W] (uint8) for images [B, 3, H, W] in [0, 1]."""
    return class_probabilities(model, processor, images).argmax(dim=1).to(torch.uint8).cpu().numpy()


def segmenter_iou(model, processor, num_images: int = 500, first_seed: int = HELD_OUT_SEED) -> dict[str, float]:
    """Per-class IoU (over all pixels of ``num_images`` held-out renders) and their mean ("mean_iou")."""
    images, labels, _ = render_dataset(range(first_seed, first_seed + num_images))
    predicted = segment(model, processor, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    ious = {}
    for index, name in enumerate(CLASSES):
        truth, guess = labels == index, predicted == index
        union = np.logical_or(truth, guess).sum()
        if truth.sum():
            ious[name] = float(np.logical_and(truth, guess).sum() / union)
    ious["mean_iou"] = float(np.mean(list(ious.values())))
    return ious


@torch.no_grad()
def quality_gate(
    pipe,
    model,
    processor,
    samples_per_prompt: int = 64,
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    noise_level: float = 1.0,
    batch_size: int = 16,
    first_seed: int = HELD_OUT_SEED,
) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """For each family prompt, the fraction of fresh samples in which the segmenter finds each key class.

    Returns:
        ({family: {class: fraction}}, {family: images [N, 3, 64, 64]}).
    """
    table, images_by_family = {}, {}
    for family, prompt in FAMILY_PROMPTS.items():
        images = []
        for start in range(0, samples_per_prompt, batch_size):
            seeds = range(first_seed + start, first_seed + min(start + batch_size, samples_per_prompt))
            images.append(
                sample_trajectories(
                    pipe, [prompt] * len(seeds), num_steps=num_steps, guidance_scale=guidance_scale, noise_level=noise_level,
                    generator=[torch.Generator().manual_seed(s) for s in seeds],
                ).images
            )
        images = torch.cat(images)
        presence = [class_presence(labels, family) for labels in segment(model, processor, images)]
        table[family] = {cls: float(np.mean([p[cls] for p in presence])) for cls in KEY_CLASSES[family]}
        images_by_family[family] = images
    return table, images_by_family
