"""An exponential moving average (EMA) of the trained weights, used for evaluation and the exported weights.

diffusers' ``EMAModel`` keeps the averaged copies (its shadow parameters) and swaps them in and out
(``store`` / ``copy_to`` / ``restore``); ``WeightAverage`` adds what a pxpo run needs around it: the parameters by
name (the names of ``pxpo.models.trainable_state_dict``, so a checkpoint stores them with safetensors), an update
every ``every`` optimizer steps (Flow-GRPO's and Flow-Factory's update interval), and a state that resumes
exactly. The n-th update uses diffusers' decay ramp (also Flow-GRPO's and Flow-Factory's): 0 for the first (the
average becomes the weights), then ``min(decay, n / (n + 9))``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from diffusers.training_utils import EMAModel

if TYPE_CHECKING:
    from pxpo.config import TrainConfig


class WeightAverage:
    """The EMA of a module's trainable parameters (those with ``requires_grad``: the LoRA, or the whole denoiser).

    Args:
        module: the (unwrapped) module being trained; its trainable parameters are averaged, in
            ``named_parameters`` order.
        decay: the decay the ramp rises to, in (0, 1).
        every: update the average after every ``every``-th optimizer step.
    """

    def __init__(self, module: torch.nn.Module, decay: float, every: int) -> None:
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.every = every
        self.optimizer_steps = 0
        self.average = EMAModel(self.params, decay=decay, foreach=True)  # shadows start as copies of the weights

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Count an optimizer step; on every ``every``-th, move the average towards the weights: for each parameter
        ``shadow <- shadow - (1 - d) * (shadow - weight)`` with ``d = 0`` for the average's first update and
        ``min(decay, n / (n + 9))`` for its n-th."""
        self.optimizer_steps += 1
        if self.optimizer_steps % self.every == 0:
            self.average.step(self.params)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside: the module's trainable parameters hold the average; after: the live weights again, bit for bit."""
        self.average.store(self.params)
        self.average.copy_to(self.params)
        try:
            yield
        finally:
            self.average.restore(self.params)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The averaged parameters by name (each shaped as its parameter), for ``safetensors``."""
        return dict(zip(self.names, self.average.shadow_params))

    def counters(self) -> dict[str, int]:
        """What the tensors do not hold, for a checkpoint's JSON: optimizer steps counted and updates made."""
        return {"optimizer_steps": self.optimizer_steps, "updates": self.average.optimization_step}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor], counters: dict[str, int]) -> None:
        """Restore what ``tensors`` and ``counters`` saved (copied into the shadows: their device and dtype stay);
        the names must match exactly (a ValueError otherwise)."""
        if set(tensors) != set(self.names):
            missing, extra = sorted(set(self.names) - set(tensors))[:3], sorted(set(tensors) - set(self.names))[:3]
            raise ValueError(f"the checkpoint's EMA does not fit the trained parameters (missing {missing}, unexpected {extra})")
        for name, shadow in zip(self.names, self.average.shadow_params):
            shadow.copy_(tensors[name])
        self.optimizer_steps = int(counters["optimizer_steps"])
        self.average.optimization_step = int(counters["updates"])


def weight_average(module: torch.nn.Module, train: TrainConfig) -> WeightAverage | None:
    """The EMA of ``module``'s trainable parameters that ``train.ema_decay`` and ``train.ema_update_every`` ask for; None
    when ``train.ema_decay`` is 0 (off: nothing is averaged, swapped or saved, so the run is as without this module)."""
    return WeightAverage(module, train.ema_decay, train.ema_update_every) if train.ema_decay > 0 else None
