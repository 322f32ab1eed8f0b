"""Third-party messages that say nothing to a pxpo user, filtered by logger and text (nothing else is hidden).

- transformers, at import: "`CLIPImageProcessor` requires torchvision (not installed); falling back to
  ..." (pxpo never uses torchvision's image processors);
- diffusers, when a LoRA folder is loaded: "No LoRA keys associated to CLIPTextModel..." (pxpo trains
  the denoiser's LoRA only, so the text encoders have none by design);
- the per-component loading bars of diffusers and transformers (a pipeline of five components draws
  eleven bars); pxpo draws its own bars for long work.
"""

from __future__ import annotations

import logging

_DROPPED = {
    "transformers.utils.import_utils": ("requires torchvision (not installed); falling back to",),
    "diffusers.loaders.lora_base": ("No LoRA keys associated to",),
    "diffusers.loaders.lora_pipeline": ("No LoRA keys associated to",),
}


class _DropKnownNoise(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def install() -> None:
    """Add the filters (idempotent) and turn off the libraries' loading bars."""
    for name, fragments in _DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise(fragments))


def disable_loading_bars() -> None:
    """diffusers' and transformers' per-component loading bars off (call after importing them)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
