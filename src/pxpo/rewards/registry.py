"""Finding reward factories by name or module path, and checking what a reward returns."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from pxpo.config import Config


class RewardFn(Protocol):
    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor | RewardOutput:
        """images [B, 3, H, W] in [0, 1] -> pixel rewards [B, H, W] (or a RewardOutput holding them)."""


@dataclass
class RewardOutput:
    """What a reward may return instead of a bare heatmap tensor, to say more about it.

    Attributes:
        heatmaps: pixel rewards [B, H, W].
        terms: for a sum of rewards, each term's unweighted pixel mean per image ([B] tensors, by label).
        judged: where the reward has an opinion, bool [B, H, W] (a person's strokes, a segmenter's target classes);
            None: everywhere. ``train.preserve_coef`` keeps the rest of the image as it was.
    """

    heatmaps: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    judged: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> RewardOutput:
        """All its tensors on ``device`` (a reward may answer on the CPU, e.g. over HTTP)."""
        judged = None if self.judged is None else self.judged.to(device)
        return RewardOutput(self.heatmaps.to(device), {name: value.to(device) for name, value in self.terms.items()}, judged)


class RewardError(ValueError):
    """A reward cannot be built, or returned something that is not a valid heatmap."""


_REGISTRY: dict[str, Callable[..., RewardFn]] = {}
INJECTED_PREFIX = "injected:"  # how a run records a reward passed as a Python callable


def injected_reward_name(reward_fn) -> str:
    """How a reward passed as ``Trainer(reward_fn=...)`` is recorded in the run's config: ``injected:module.qualname``."""
    kind = reward_fn if callable(reward_fn) and hasattr(reward_fn, "__qualname__") else type(reward_fn)
    return f"{INJECTED_PREFIX}{getattr(kind, '__module__', '?')}.{kind.__qualname__}"


def record_injected_reward(config: Config, reward_fn: RewardFn | None, resume: bool) -> Config:
    """The config with ``reward.name`` saying which callable was passed as ``Trainer(reward_fn=...)`` (unchanged when
    None); resuming with another reward than the run's is refused."""
    if reward_fn is None:
        return config
    from pxpo.config import ConfigError, RewardConfig

    name = injected_reward_name(reward_fn)
    if resume and config.reward.name != name:
        raise ConfigError(f"this run was trained with reward {config.reward.name!r}; reward_fn is {name!r}: resume with the same reward")
    return config.model_copy(update={"reward": RewardConfig(name=name)}, deep=True)


def register_reward(name: str) -> Callable[[Callable[..., RewardFn]], Callable[..., RewardFn]]:
    """Decorator: register a reward factory under ``name``."""

    def decorate(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        if name in _REGISTRY:
            raise ValueError(f"a reward named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available() -> list[str]:
    """Names of the registered reward factories."""
    return sorted(_REGISTRY)


def _find_factory(name: str) -> Callable[..., RewardFn]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(INJECTED_PREFIX):
        raise RewardError(
            f"reward {name!r} was a Python callable passed as Trainer(reward_fn=...): it cannot be rebuilt from the config; "
            "resume this run from Python with the same reward_fn"
        )
    if ":" not in name:
        raise RewardError(f"reward {name!r}: not a registered reward ({', '.join(available())}) nor a 'module:factory' path")
    module_name, _, attr = name.partition(":")
    try:
        module = _import_from_here_or_path(module_name)
    except ImportError as error:
        raise RewardError(f"reward {name!r}: cannot import module {module_name!r} ({error})") from error
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise RewardError(f"reward {name!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def _import_from_here_or_path(module_name: str):
    """Import ``module_name``; a module in the current folder is found too (as ``python -m`` would find it)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        top = module_name.split(".")[0]
        here = Path.cwd()
        if error.name != top or not ((here / f"{top}.py").is_file() or (here / top / "__init__.py").is_file()):
            raise
    sys.path.insert(0, str(here))
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(str(here))


def load_reward(name: str, **kwargs: Any) -> RewardFn:
    """Build a reward: ``name`` is a registered name or ``"module:factory"``; kwargs go to the factory."""
    factory = _find_factory(name)
    try:
        reward = factory(**kwargs)
    except TypeError as error:
        raise RewardError(f"reward {name!r} with arguments {kwargs}: {error}") from error
    if not callable(reward):
        raise RewardError(f"reward {name!r}: its factory returned {type(reward).__name__}, expected a callable")
    return reward


def check_reward_output(output: Any, images: torch.Tensor, reward_name: str) -> RewardOutput:
    """What a reward returned (a tensor or a RewardOutput), checked (``check_heatmaps``), as a RewardOutput."""
    if isinstance(output, RewardOutput):
        heatmaps = check_heatmaps(output.heatmaps, images, reward_name)
        return RewardOutput(heatmaps, dict(output.terms), check_judged(output.judged, heatmaps, reward_name))
    return RewardOutput(check_heatmaps(output, images, reward_name))


def check_judged(judged: Any, heatmaps: torch.Tensor, reward_name: str) -> torch.Tensor | None:
    """A reward's judged map: None, or bool [B, H, W] like its heatmaps. An image may be judged nowhere (a segmentation
    reward on an image without its classes): its values are then no opinion, and preservation keeps all of it."""
    if judged is None:
        return None
    if not isinstance(judged, torch.Tensor) or judged.dtype != torch.bool:
        kind = f"a {judged.dtype} tensor" if isinstance(judged, torch.Tensor) else type(judged).__name__
        raise RewardError(f"reward {reward_name!r} returned a judged map that is {kind}: expected a bool tensor of shape {list(heatmaps.shape)}")
    if judged.shape != heatmaps.shape:
        raise RewardError(f"reward {reward_name!r} returned a judged map of shape {list(judged.shape)}: expected {list(heatmaps.shape)}")
    return judged.to(heatmaps.device)


def check_heatmaps(heatmaps: Any, images: torch.Tensor, reward_name: str) -> torch.Tensor:
    """Check that a reward returned finite float maps [B, H, W] matching ``images`` [B, 3, H, W]."""
    b, _, h, w = images.shape
    if not isinstance(heatmaps, torch.Tensor):
        raise RewardError(f"reward {reward_name!r} returned {type(heatmaps).__name__}: expected a torch.Tensor of shape {[b, h, w]}")
    if tuple(heatmaps.shape) != (b, h, w):
        raise RewardError(f"reward {reward_name!r} returned shape {list(heatmaps.shape)}: expected {[b, h, w]}")
    heatmaps = heatmaps.float()
    bad = ~torch.isfinite(heatmaps)
    if bool(bad.any()):
        first = heatmaps[bad][0].item()
        raise RewardError(
            f"reward {reward_name!r} returned {int(bad.sum())} non-finite values (e.g. {first}) in images "
            f"{sorted(set(bad.flatten(1).any(1).nonzero().flatten().tolist()))}: expected finite numbers"
        )
    return heatmaps
