"""Segmentation-model rewards: the paper's AI-feedback experiment (minus the hair confidence)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pxpo.rewards.registry import RewardError, RewardFn, RewardOutput, register_reward


@torch.no_grad()
def class_probabilities(model, processor, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Per-class probabilities at image resolution.

    Args:
        model: a transformers semantic-segmentation model (returns ``.logits`` [B, K, h, w]).
        processor: its image processor (resizing and normalisation).
        images: [B, 3, H, W] float in [0, 1].

    Returns:
        [B, K, H, W] softmax probabilities, upsampled bilinearly to the images' size.
    """
    device = next(model.parameters()).device
    out = []
    for chunk in images.split(batch_size):
        inputs = processor(images=chunk.detach().float().cpu(), do_rescale=False, return_tensors="pt")
        logits = model(pixel_values=inputs["pixel_values"].to(device)).logits
        logits = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        out.append(logits.softmax(dim=1))
    return torch.cat(out).to(images.device)


def resolve_classes(id2label: dict, classes: dict[str, float], model_name: str) -> torch.Tensor:
    """Weights [K] from {class name: weight}; names match the model's labels, ignoring case."""
    by_name = {str(label).lower(): int(index) for index, label in id2label.items()}
    weights = torch.zeros(len(id2label))
    for name, weight in classes.items():
        if name.lower() not in by_name:
            raise RewardError(
                f"segmentation reward: model {model_name!r} has no class {name!r}; its classes are "
                f"{', '.join(str(id2label[k]) for k in sorted(id2label, key=int))}"
            )
        weights[by_name[name.lower()]] = float(weight)
    return weights


@register_reward("segmentation")
def segmentation(model: str = "pxpo-tiny-seg", classes: dict[str, float] | None = None, batch_size: int = 16) -> RewardFn:
    """Pixel reward = sum over classes of weight * the segmenter's confidence in that class.

    It judges the pixels the segmenter assigns (most likely class) to one of ``classes``: the rest of the image is
    not its business (``train.preserve_coef`` keeps it).

    Args:
        model: a semantic-segmentation model: the bundled "pxpo-tiny-seg", a folder or a hub id
            (e.g. "mattmdjaga/segformer_b2_clothes", whose hair class is "Hair").
        classes: {class name: weight}; the paper's hair experiment is {"hair": -1.0} (the default).
        batch_size: images per segmenter forward pass.
    """
    from pxpo.models import load_segmenter

    classes = {"hair": -1.0} if classes is None else dict(classes)
    if not classes:
        raise RewardError("segmentation reward: classes is empty; expected e.g. {hair = -1.0}")
    segmenter, processor = load_segmenter(model)
    weights = resolve_classes(segmenter.config.id2label, classes, model)

    def reward(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        segmenter.to(images.device)
        probabilities = class_probabilities(segmenter, processor, images, batch_size)
        heatmaps = torch.einsum("bkhw,k->bhw", probabilities, weights.to(probabilities.device))
        return RewardOutput(heatmaps, judged=weights.to(probabilities.device).ne(0)[probabilities.argmax(dim=1)])

    return reward
