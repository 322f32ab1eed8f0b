"""Human feedback as heatmaps: painted maps, the folder protocol, and a simulated annotator.

A painted map holds +2 where the image should have more of what is there, -2 where less, 0
elsewhere (the paper's third experiment). As a PNG, pure green (0, 255, 0) is +2, pure red
(255, 0, 0) is -2 and anything else 0; painted in any paint program, a pixel counts as green when
its green channel exceeds 127 and the other two are below 128 (red likewise).

The folder protocol (``reward.name = "folder_feedback"``) lets any tool drive training: for epoch k
the trainer writes ``DIR/step_0003.png`` (the image to judge, k = 3) and waits until
``DIR/step_0003.feedback.png`` appears (same size, painted green and red), then trains on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pxpo.io import save_image
from pxpo.rewards.registry import RewardError, RewardFn, RewardOutput, register_reward
from pxpo.images import to_pil

FEEDBACK_VALUE = 2.0
ALLOWED_VALUES = (-2, 0, 2)


def encode_feedback(values: np.ndarray) -> Image.Image:
    """A map [H, W] of {-2, 0, +2} as an RGB image: green +2, red -2, black 0."""
    rgb = np.zeros((*values.shape, 3), dtype=np.uint8)
    rgb[values > 0] = (0, 255, 0)
    rgb[values < 0] = (255, 0, 0)
    return Image.fromarray(rgb)


def decode_feedback(image: Image.Image, value: float = FEEDBACK_VALUE) -> np.ndarray:
    """An RGB(A) image painted green (+) and red (-) -> float32 map [H, W] of {-value, 0, +value}."""
    rgb = np.asarray(image.convert("RGB")).astype(np.int16)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    out = np.zeros(rgb.shape[:2], dtype=np.float32)
    out[(green > 127) & (red < 128) & (blue < 128)] = value
    out[(red > 127) & (green < 128) & (blue < 128)] = -value
    return out


def feedback_layer(values: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """A map [H, W] as an RGBA layer: green +, red -, with opacity ``alpha``; transparent where 0."""
    rgba = np.zeros((*values.shape, 4), dtype=np.uint8)
    rgba[..., :3] = np.asarray(encode_feedback(values))
    rgba[..., 3] = np.where(values != 0, round(255 * alpha), 0)
    return Image.fromarray(rgba)


def overlay_feedback(image: Image.Image, values: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with the painted feedback blended in (for figures)."""
    return Image.alpha_composite(image.convert("RGBA"), feedback_layer(values, alpha)).convert("RGB")


PAINTED_KEY = "painted"  # the metadata entry that carries a person's map to the ``painted`` reward


@register_reward("painted")
def painted() -> RewardFn:
    """The map a person painted on each image, handed over with the sample: ``metadata[i]["painted"]`` [H, W].

    The app trains a step with ``trainer.step(epoch, metadata={"painted": values})``; the reward holds no state.
    It judges the painted pixels.
    """

    def reward(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        maps = []
        for image, meta in zip(images, metadata):
            if meta.get(PAINTED_KEY) is None:
                raise RewardError(f"painted feedback: sample {meta.get('prompt', '?')!r} came without a painted map (metadata[{PAINTED_KEY!r}])")
            values = torch.as_tensor(np.asarray(meta[PAINTED_KEY], dtype=np.float32))
            if tuple(values.shape) != tuple(image.shape[-2:]):
                raise RewardError(f"painted feedback of shape {list(values.shape)} for an image of {list(image.shape[-2:])}: expected the image's size")
            maps.append(values)
        return painted_output(torch.stack(maps).to(images.device))

    return reward


def painted_output(maps: torch.Tensor) -> RewardOutput:
    """Painted maps [B, H, W] as a reward: they judge exactly the painted (non-zero) pixels."""
    return RewardOutput(maps, judged=maps != 0)


def feedback_name(step: int) -> str:
    """The one naming rule of feedback files: ``step_0003`` (+ ``.png`` for the image, ``.feedback.png`` for its map)."""
    return f"step_{step:04d}"


@register_reward("folder_feedback")
def folder_feedback(directory: str, timeout_seconds: float = 86_400.0, poll_seconds: float = 0.5) -> RewardFn:
    """The folder protocol: write DIR/step_0003.png (epoch 3), wait for DIR/step_0003.feedback.png, return its map.

    Args:
        directory: the shared folder.
        timeout_seconds: how long to wait for each feedback file before stopping with an error.
        poll_seconds: how often to look for it.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)

    def reward(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        maps = []
        for image, meta in zip(images, metadata):
            name = feedback_name(int(meta.get("epoch", 0)))
            save_image(to_pil(image), folder / f"{name}.png")
            feedback = folder / f"{name}.feedback.png"
            deadline = time.monotonic() + timeout_seconds
            while not feedback.exists():
                if time.monotonic() > deadline:
                    raise RewardError(f"folder feedback: no {feedback} after {timeout_seconds:.0f} s")
                time.sleep(poll_seconds)
            painted = Image.open(feedback)
            if painted.size != (image.shape[-1], image.shape[-2]):
                raise RewardError(f"folder feedback: {feedback} is {painted.size[0]}x{painted.size[1]}; expected {image.shape[-1]}x{image.shape[-2]}")
            maps.append(torch.from_numpy(decode_feedback(painted)))
        return painted_output(torch.stack(maps).to(images.device))

    return reward


@register_reward("simulated_annotator")
def simulated_annotator(
    model: str = "pxpo-tiny-seg",
    increase: Sequence[str] = ("tree",),
    decrease: Sequence[str] = ("water",),
    value: float = FEEDBACK_VALUE,
) -> RewardFn:
    """A stand-in for a person: paints +value on the segmenter's ``increase`` classes and -value on ``decrease``.

    Each pixel takes the segmenter's most likely class; 0 elsewhere (the paper's Fig. 1 feedback). Like a person, it
    judges the pixels it paints.
    """
    from pxpo.models import load_segmenter
    from pxpo.rewards.segmentation import class_probabilities, resolve_classes

    segmenter, processor = load_segmenter(model)
    signs = resolve_classes(segmenter.config.id2label, {**{c: value for c in increase}, **{c: -value for c in decrease}}, model)

    def reward(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        segmenter.to(images.device)
        labels = class_probabilities(segmenter, processor, images).argmax(dim=1)
        return painted_output(signs.to(images.device)[labels])

    return reward
