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

from pxpo import world as _world  # noqa: E402,F401  (registers the bundled models' names; imports no torch)

# The public API at the top level, imported on first use (``import pxpo`` stays light).
_EXPORTS = {
    "Trainer": "pxpo.trainer",
    "Config": "pxpo.config",
    "load_config": "pxpo.config",
    "load_pipeline": "pxpo.models",
    "load_segmenter": "pxpo.models",
    "register_pipeline": "pxpo.models",
    "register_reward": "pxpo.rewards",
    "load_reward": "pxpo.rewards",
    "scalar_as_heatmap": "pxpo.rewards",
    "family_for": "pxpo.families",
    "register_family": "pxpo.families",
    "sample_trajectories": "pxpo.rollout",
    "ddim_step_with_logprob": "pxpo.sampling",
    "flow_step_with_logprob": "pxpo.sampling",
    "pxpo_loss": "pxpo.losses",
    "ddpo_loss": "pxpo.losses",
    "heatmap_to_latent": "pxpo.advantages",
    "compute_advantages": "pxpo.advantages",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pxpo' has no attribute {name!r}")
