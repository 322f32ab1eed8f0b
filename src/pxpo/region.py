"""Where an image is judged: the region a regional adapter acts in (``train.regional_adapter``).

A reward says which pixels it judges (``RewardOutput.judged``: a person's strokes, a segmenter's target classes). With
a regional adapter the policy's prediction changes only there (``pxpo.rollout.policy_output``), on the latent grid
where the map is area-averaged like the heatmaps:

- single image (a person painting on one image, ``pxpo.schedule.SingleImage``): the union of every step's judged map
  (``JudgedRegion``), kept in each checkpoint and beside the exported LoRA (lora/region.png, white where judged), so a
  resumed session and ``pxpo sample`` use the same region;
- many images: each sample's region is what the reward judges in the base model's image from the same noise
  (``sample_where_judged``: one more sampling pass, with the LoRA off, and one more reward call per batch).

Shapes: B batch, H x W pixels, h x w latent grid.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pxpo.advantages import InterpolationMode, heatmap_to_latent
from pxpo.io import save_image
from pxpo.sampling import Generator, Trajectories

REGION_FILE = "region.png"  # beside the exported LoRA


class JudgedRegion:
    """The union of an image's judged maps (bool [H, W]; None until the first map), and its share of each latent cell.

    Args:
        latent_size: (h, w), the latent grid.
        interpolation: how pixel maps reach the latent grid (``advantage.interpolation``).
    """

    def __init__(self, latent_size: tuple[int, int], interpolation: InterpolationMode = "area") -> None:
        self.latent_size, self.interpolation = tuple(latent_size), interpolation
        self.pixels: torch.Tensor | None = None

    def add(self, judged: torch.Tensor | None, image_size: tuple[int, int]) -> bool:
        """Widen the region by one step's judged map bool [1, H, W] (None: the reward judged every pixel of the image);
        return whether it grew."""
        judged = torch.ones((1, *image_size), dtype=torch.bool) if judged is None else judged.bool().cpu()
        if judged.shape[0] != 1:
            raise ValueError(f"judged maps of {judged.shape[0]} images: a region belongs to one image (single-image mode)")
        if self.pixels is not None and tuple(self.pixels.shape) != tuple(judged.shape[1:]):
            raise ValueError(f"a judged map of {tuple(judged.shape[1:])} pixels for a region of {tuple(self.pixels.shape)}")
        before = self.pixels
        self.pixels = judged[0] if before is None else before | judged[0]
        return bool(self.pixels.any()) if before is None else not torch.equal(before, self.pixels)

    def latent(self) -> torch.Tensor:
        """The judged share of each latent cell [1, 1, h, w] in [0, 1]; zeros before the first judged map."""
        if self.pixels is None:
            return torch.zeros((1, 1, *self.latent_size))
        return heatmap_to_latent(self.pixels[None].float(), self.latent_size, self.interpolation)

    # persistence -------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """For a checkpoint (``RunFolder.save_checkpoint``'s extra "region"): the pixels as uint8, none before any map."""
        return {} if self.pixels is None else {"pixels": self.pixels.to(torch.uint8)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore ``tensors()``'s output."""
        pixels = tensors.get("pixels")
        self.pixels = None if pixels is None else pixels.bool()

    def save_png(self, folder: Path, image_size: tuple[int, int]) -> None:
        """FOLDER/region.png (white where judged; all black before the first map, of ``image_size`` (H, W)), written
        atomically."""
        pixels = self.pixels if self.pixels is not None else torch.zeros(image_size, dtype=torch.bool)
        save_image(Image.fromarray(pixels.numpy().astype(np.uint8) * 255), Path(folder) / REGION_FILE)

    @classmethod
    def from_png(cls, path: Path, latent_size: tuple[int, int], interpolation: InterpolationMode = "area") -> JudgedRegion:
        """The region saved by ``save_png``; a PNG that is not one is refused naming the file."""
        with Image.open(path) as image:
            if image.mode not in ("L", "1"):
                raise ValueError(f"{str(path)!r} is a {image.mode} image: a region is a black-and-white (mode L) PNG, white where judged")
            pixels = np.asarray(image.convert("L"))
        if not np.isin(pixels, (0, 255)).all():
            raise ValueError(f"{str(path)!r} has grey pixels: a region is black (not judged) or white (judged)")
        region = cls(latent_size, interpolation)
        region.pixels = torch.from_numpy(pixels == 255)
        return region


def run_region(weights: Path, latent_size: tuple[int, int], image_size: tuple[int, int] | None, interpolation: InterpolationMode = "area") -> torch.Tensor:
    """A single-image regional run's region on the latent grid [1, 1, h, w], from WEIGHTS/region.png beside its LoRA
    (``pxpo sample``; all black: never judged, the LoRA acts nowhere). ``image_size``: (H, W) the caller samples at,
    refused when it is not the region's (None: the model's native size, at which the run was trained then)."""
    path = Path(weights) / REGION_FILE
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is missing: the run's LoRA acts only where its image was judged, which that file keeps "
                         "(resuming the run writes it again)")  # fmt: skip
    region = JudgedRegion.from_png(path, latent_size, interpolation)
    if image_size is not None and tuple(image_size) != tuple(region.pixels.shape):
        height, width = region.pixels.shape
        raise ValueError(f"{str(path)!r} is the region of a {height} x {width} image: sample at that size (got {image_size[0]} x {image_size[1]})")
    return region.latent()


def judged_latent(judged: torch.Tensor | None, batch: int, latent_size: tuple[int, int], interpolation: InterpolationMode = "area") -> torch.Tensor:
    """Each image's judged share of each latent cell [B, 1, h, w] from a judged map bool [B, H, W] (None: every pixel)."""
    if judged is None:
        return torch.ones((batch, 1, *latent_size))
    return heatmap_to_latent(judged.float().cpu(), latent_size, interpolation)


def fork(generator: Generator) -> Generator:
    """New generator(s) in the same state as ``generator`` (one or a list), which they leave untouched."""
    if generator is None:
        raise ValueError("sampling twice from the same noise needs a generator (or one per sample), not the global one")
    if isinstance(generator, torch.Generator):
        return torch.Generator(device=generator.device).set_state(generator.get_state())
    return [fork(g) for g in generator]


def sample_where_judged(
    sample: Callable[[Generator, torch.Tensor | None], Trajectories],
    generator: Generator,
    judge: Callable[[Trajectories], torch.Tensor | None],
    latent_size: tuple[int, int],
    interpolation: InterpolationMode = "area",
) -> Trajectories:
    """The policy's samples with each one's LoRA acting only where the reward judges the base model's image from the
    same noise: ``sample(generator, region)`` first with copies of the generator(s) and an empty region (the LoRA
    nowhere: the base model), whose images ``judge`` maps to bool [B, H, W] (None: every pixel), then with the
    generator(s) themselves and that region [B, 1, h, w]. The generators end as after one sampling pass."""
    base = sample(fork(generator), torch.zeros((1, 1, *latent_size)))
    return sample(generator, judged_latent(judge(base), len(base), latent_size, interpolation))
