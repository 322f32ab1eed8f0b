"""The bundled world: procedural scenes and the tiny models trained on them.

Importing this package registers the bundled models with ``pxpo.models`` (``import pxpo`` does it):

- ``pxpo-tiny``: a StableDiffusionPipeline (UNet + DDIM), ``weights/pxpo-tiny``;
- ``pxpo-tiny-flow``: a StableDiffusion3Pipeline (MM-DiT + flow matching), ``weights/pxpo-tiny-flow``;
- ``pxpo-tiny-seg``: a transformers SegFormer, ``weights/pxpo-tiny-seg``;
- ``tiny-random``, ``tiny-random-sd3``, ``tiny-random-flux``: the same architectures (FLUX's at toy
  size) with random weights, built in code, for tests and smoke runs.

Registering imports no torch or diffusers: folders are registered as paths, the random pipelines as
builders that import ``pxpo.world.architecture`` when called.
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
register_segmenter("pxpo-tiny-seg", WEIGHTS / "pxpo-tiny-seg")
