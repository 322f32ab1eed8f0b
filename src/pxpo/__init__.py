"""pxpo: fine-tune text-to-image diffusion models with pixel-wise feedback (PXPO) or DDPO.

The data flow, module by module:

    families/      SD, SD3 and FLUX pipelines behind one interface (encode, predict, step, decode, LoRA)
    sampling.py    sample trajectories, keeping every step's per-element log-probability
    rewards/       heatmap rewards: fn(images, prompts, metadata) -> [B, H, W]
    advantages.py  heatmap -> latent grid, normalisation, clipping
    losses.py      pxpo_loss, ddpo_loss (pure functions)
    trainer.py     the epoch: sample -> reward -> advantage -> update; accelerate lives here
    reporting.py   evaluation images, metrics, reward curve and evolution grid
"""

__version__ = "0.1.0"

from pxpo import quiet as _quiet  # noqa: E402

_quiet.install()  # before transformers is imported: its import-time notices are filtered

from pxpo import world as _world  # noqa: E402,F401  (registers the bundled models with pxpo.models)
