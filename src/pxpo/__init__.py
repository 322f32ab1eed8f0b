"""pxpo: fine-tune text-to-image diffusion models with pixel-wise feedback (PXPO) or DDPO.

The data flow, module by module:

    sampling.py    sample trajectories, keeping every step's per-element log-probability
    rewards/       heatmap rewards: fn(images, prompts, metadata) -> [B, H, W]
    advantages.py  heatmap -> latent grid, normalisation, clipping
    losses.py      pxpo_loss, ddpo_loss (pure functions)
    trainer.py     the epoch: sample -> reward -> advantage -> update; accelerate lives here
"""

__version__ = "0.1.0"
