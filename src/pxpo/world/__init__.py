"""The bundled world: procedural scenes and the tiny models trained on them.

Importing this package registers the bundled models with ``pxpo.models`` (``import pxpo`` does it):

- ``pxpo-tiny``: a StableDiffusionPipeline (UNet + DDIM), ``weights/pxpo-tiny``;
- ``pxpo-tiny-flow``: a StableDiffusion3Pipeline (MM-DiT + flow matching), ``weights/pxpo-tiny-flow``;
- ``pxpo-tiny-seg``: a transformers SegFormer, ``weights/pxpo-tiny-seg``;
- ``tiny-random``, ``tiny-random-sd3``, ``tiny-random-sdxl``, ``tiny-random-flux``, ``tiny-random-flux2``,
  ``tiny-random-flux2-klein``, ``tiny-random-qwen-image``, ``tiny-random-z-image``: every supported family's
  real classes at toy size with random weights, built in code (``architecture.py``, ``tiny_*.py``), for tests
  and smoke runs.

Registering imports no torch or diffusers: folders are registered as paths, the random pipelines as
builders that import their module when called.
"""

from pathlib import Path

from pxpo.models import register_pipeline, register_segmenter

WEIGHTS = Path(__file__).parent / "weights"


def _tiny_random():
    from pxpo.world.architecture import build_tiny_pipeline

    return build_tiny_pipeline()


def _tiny_random_sd3():
    from pxpo.world.architecture import build_tiny_sd3_pipeline

    return build_tiny_sd3_pipeline()


def _tiny_random_flux():
    from pxpo.world.architecture import build_tiny_flux_pipeline

    return build_tiny_flux_pipeline()


register_pipeline("pxpo-tiny", WEIGHTS / "pxpo-tiny")
register_pipeline("pxpo-tiny-flow", WEIGHTS / "pxpo-tiny-flow")
register_pipeline("tiny-random", _tiny_random)
register_pipeline("tiny-random-sd3", _tiny_random_sd3)
register_pipeline("tiny-random-flux", _tiny_random_flux)


def _tiny_random_sdxl():  # issue 19: a StableDiffusionXLPipeline at toy size (pxpo.world.tiny_sdxl)
    from pxpo.world.tiny_sdxl import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline()


register_pipeline("tiny-random-sdxl", _tiny_random_sdxl)


def _tiny_random_qwen_image():  # issue 19: a QwenImagePipeline at toy size (pxpo.world.tiny_qwen_image)
    from pxpo.world.tiny_qwen_image import build_tiny_qwen_image_pipeline

    return build_tiny_qwen_image_pipeline()


register_pipeline("tiny-random-qwen-image", _tiny_random_qwen_image)


def _tiny_random_flux2():  # issue 19: a Flux2Pipeline at toy size (pxpo.world.tiny_flux2)
    from pxpo.world.tiny_flux2 import build_tiny_flux2_pipeline

    return build_tiny_flux2_pipeline()


def _tiny_random_flux2_klein():  # issue 19: a Flux2KleinPipeline (base: CFG) at toy size (pxpo.world.tiny_flux2)
    from pxpo.world.tiny_flux2 import build_tiny_flux2_klein_pipeline

    return build_tiny_flux2_klein_pipeline()


register_pipeline("tiny-random-flux2", _tiny_random_flux2)
register_pipeline("tiny-random-flux2-klein", _tiny_random_flux2_klein)


def _tiny_random_z_image():  # issue 19: a ZImagePipeline at toy size (pxpo.world.tiny_z_image)
    from pxpo.world.tiny_z_image import build_tiny_z_image_pipeline

    return build_tiny_z_image_pipeline()


register_pipeline("tiny-random-z-image", _tiny_random_z_image)
register_segmenter("pxpo-tiny-seg", WEIGHTS / "pxpo-tiny-seg")
