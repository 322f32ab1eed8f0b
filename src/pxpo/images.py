"""Image tensors as bytes and pictures: the one rule for turning float images into 8-bit ones."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (any shape) -> uint8 in 0..255, clamped and rounded to the nearest value."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [0, 1] -> PIL RGB image."""
    return Image.fromarray(np.ascontiguousarray(to_uint8(image).permute(1, 2, 0).cpu().numpy()))
