"""pxpo: fine-tune text-to-image diffusion models with pixel-wise feedback (PXPO) or DDPO.

The data flow, module by module:

    families/      SD, SDXL, SD3, FLUX.1, FLUX.2, Qwen-Image and Z-Image pipelines behind one interface
    rollout.py     sample trajectories, keeping every (SDE-window) step's per-element log-probability
    sampling.py    the policy steps (DDIM, flow SDE, CPS) with per-element log-probabilities
    rewards/       heatmap rewards: fn(images, prompts, metadata) -> [B, H, W]
    advantages.py  heatmap -> latent grid, normalisation, clipping
    algorithms/    PXPO, DDPO/GRPO, AWM and pixel-wise AWM: advantages and the loss
    losses.py      pxpo_loss, ddpo_loss, matching_log_likelihood (pure functions)
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
    "cps_step_with_logprob": "pxpo.sampling",
    "pxpo_loss": "pxpo.losses",
    "ddpo_loss": "pxpo.losses",
    "matching_log_likelihood": "pxpo.losses",
    "heatmap_to_latent": "pxpo.advantages",
    "compute_advantages": "pxpo.advantages",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pxpo' has no attribute {name!r}")
